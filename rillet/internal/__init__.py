"""Generated gRPC stubs of the node-to-node contract (proto/rillet/internal/v1); do not edit."""
