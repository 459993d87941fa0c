"""Challenge solvers: the HTTP-01 responder (DNS-01 comes with its issue)."""
