"""Adapters that tell people: mail over SMTP, webhooks over HTTP."""
