"""Use cases, callable from the CLI today and the API tomorrow. They take ports, not adapters."""
