"""The command line: parse, call a service, render. No business logic here."""
