"""Pure domain: names, key types, states, policies and the error taxonomy. No I/O here."""
