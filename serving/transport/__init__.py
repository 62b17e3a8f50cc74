"""How requests arrive: the gRPC servicers and their interceptor (`grpc_server`), the REST port's HTTP server
(`rest_server`), gRPC options and TLS."""
