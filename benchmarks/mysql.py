"""Moved into the ``benchmarks`` package (``benchmarks/mysql_rows.py``): run
``python -m benchmarks --mysql`` to add the MySQL rows to a full run (see docs/benchmarks.md).

Kept as a shim so ``python benchmarks/mysql.py [options]`` still runs the MySQL rows alone (bulk via
PyMySQL and the mariadb C client, connect + first query, SELECT 1 round trips) against the real
``sdm gateway --mysql ...`` process; the options are those of ``python -m benchmarks``.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repo, not benchmarks/ (module names)
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "mysql", *sys.argv[1:]]))
