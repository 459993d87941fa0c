"""Use cases: what the CLI, the API and the console call (through wiring.Broker).
They take ports, not adapters."""
