"""Transports: how the toolkit reads and writes datastore files."""
