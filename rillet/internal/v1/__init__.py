"""Generated from proto/rillet/internal/v1 by `make proto`; do not edit."""
