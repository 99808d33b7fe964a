"""Consensus and membership."""
