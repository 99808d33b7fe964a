"""grpc.aio servicers."""
