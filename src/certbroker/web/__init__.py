"""The web console: server-rendered pages over the same services as the CLI and API."""

from certbroker.web.console import install

__all__ = ["install"]
