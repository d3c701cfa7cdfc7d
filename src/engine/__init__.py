"""Bunsui's engine: the pipeline language, the graph, expressions and (next) the reducer.

Pure: nothing here imports boto3 or sqlite3; adapters live in ``engine.aws``
and ``engine.local`` behind the ports the core defines.
"""
