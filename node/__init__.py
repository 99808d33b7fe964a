"""The broker process: gRPC services and partition storage."""
