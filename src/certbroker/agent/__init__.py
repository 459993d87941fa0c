"""`certbroker agent`: the program on a gateway, load balancer or server."""
