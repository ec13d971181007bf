"""State store: the Protocol, its SQLite and in-memory implementations, and the JSON codec."""
