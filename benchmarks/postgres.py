"""Moved into the ``benchmarks`` package: run ``python -m benchmarks`` (see docs/benchmarks.md).

Kept as a shim so ``python benchmarks/postgres.py [options]`` still runs the PostgreSQL rows (bulk,
pgbench -S, connect + first query, gateway memory) against the real ``sdm gateway`` process; the
options are those of ``python -m benchmarks``.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repo, not benchmarks/ (module names)
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "bulk,pgbench,connect,memory", *sys.argv[1:]]))
