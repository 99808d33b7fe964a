"""Generated gRPC stubs of the public contract (proto/rillet/api/v1); do not edit."""
