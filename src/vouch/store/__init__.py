"""Storage: SQLAlchemy 2 tables, repositories per aggregate, Alembic migrations.

Nothing outside this package imports SQLAlchemy.
"""
