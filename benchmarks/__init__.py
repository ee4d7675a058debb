"""The gateway's benchmarks (DESIGN.md §7, issue #6): one entry point, ``python -m benchmarks``.

It sets up everything itself (a private PostgreSQL cluster, a $SDM_HOME, the real ``sdm gateway``
process, PgBouncer) and writes ``benchmarks/results/latest.{json,md,png}``. Modules, one job each:

- ``setup``: cluster, home, gateway process and PgBouncer lifecycle (``pgbouncer``, ``procs``);
- ``pg_rows``: bulk SELECT and connect + first query; ``pgbench``: small queries;
- ``notebook``: ``%sdm sql`` vs JupySQL vs ``pandas.read_sql``; ``audit``: audited queries/s;
- ``memory``: the gateway's RSS; ``mysql_rows``: the optional MySQL rows;
- ``table``: bars and rows; ``report``: JSON, Markdown, PNG; ``machine``: what ran it.

See docs/benchmarks.md. Nothing here asserts a time: the bars are reported, not enforced.
"""
