"""Alembic migrations. ``HEAD`` is the newest revision; a test keeps it equal to Alembic's head."""

HEAD = "0010"
