"""The history's schema migrations (Alembic), applied by lab.history.database on open."""
