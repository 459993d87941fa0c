"""Shared helpers for certbroker's test suite (ports, the Pebble harness)."""
