"""Consumer groups: the pure coordinator (membership and cooperative sticky assignment), the
offset stores, and their errors. The gRPC servicer is node/services/groups.py."""
