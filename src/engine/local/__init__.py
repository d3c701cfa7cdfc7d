"""The local backend's adapters: the engine's ports on this machine.

:class:`engine.local.store.SqliteStore` keeps sessions, job runs, history and
pipeline versions in one SQLite file (WAL), so a pipeline runs and can be
inspected on a laptop exactly as it would on AWS.
"""
