"""Adapters that write DNS-01 TXT records (RFC 2136, dns-lexicon) and check they are visible."""
