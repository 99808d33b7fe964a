"""The Python client: producer, consumer, admin."""
