"""What outlives a request: sessions and registered models, in SQLite files or PostgreSQL."""
