"""The gRPC edge: server, thin servicer, wire conversion and interceptors."""
