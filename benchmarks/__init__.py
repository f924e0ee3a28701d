"""botd's benchmarks: ``python -m benchmarks`` (``nox -s bench``) writes docs/benchmarks.md.

One module per figure (ready, throughput, dispatch, idle, memory, shutdown, capacity); the
shared process and statistics helpers are in :mod:`benchmarks.common`, the report in
:mod:`benchmarks.report`, the protocol-only baseline bot in :mod:`benchmarks.minimal_bot`.
"""
