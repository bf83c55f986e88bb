"""Baton's benchmark: throughput, edge latency, identity cost and memory.

Run it with ``python bench/run.py`` (``--quick`` for a one-minute run, ``--json``
for one JSON object); ``bench/README.md`` says what each figure means.
"""
