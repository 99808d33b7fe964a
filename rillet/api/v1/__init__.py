"""Generated from proto/rillet/api/v1 by `make proto`; do not edit."""
