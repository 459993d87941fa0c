"""certbroker: an ACME certificate broker for fleets of endpoints."""

__version__ = "0.1.0"
