"""Storage adapter: SQLAlchemy Core tables, Alembic migrations, the repository. No SQL elsewhere."""
