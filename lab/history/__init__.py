"""The run history: every run's cells, outcomes, figures and facts, in a real database.

SQLite (``<reports>/history.sqlite``) by default, PostgreSQL when ``UCVM_HISTORY_URL`` names
one; SQLAlchemy Core for the tables, Alembic for their migrations. It reads lab.evidence's
``Result``s and nothing else of the lab: the command line (lab/cli/history.py) passes the
results, the matrix's hash and the facts it knows, and the report never needs it.

- database.py  where the history is (``locate``), ``open_history`` (migrates), HistoryError
- schema.py    the tables; migrations/ the Alembic revisions that make them
- record.py    ``record_run``: a run's results and facts in
- query.py     runs, a run's cells, a cell's runs, ``figure_trend`` (for the report's plots)
- compare.py   what changed between two runs
- cells.py     a cell's key and its name on the command line (``kvm/newest/boot``)
- host.py      the host's facts (CPU count, QEMU version, other VMs running, ...)
"""
