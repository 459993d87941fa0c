"""CA adapter: ACME (RFC 8555) over the certbot project's `acme` library."""
