"""Suite-wide fixtures: private, password-enforcing PostgreSQL and MariaDB servers, and moto.

Each server is started once per test session, from the machine's binaries, on a free
127.0.0.1 port, and removed at the end. The machine's own servers (5432/3306) are never used.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Make `tests.support` importable without a tests/__init__.py. Once pyproject.toml has
# `pythonpath = ["."]` under [tool.pytest.ini_options], this is redundant but harmless.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support import mysql_server as _mysql  # noqa: E402
from tests.support import postgres_cluster as _pg  # noqa: E402
from tests.support.accounts import DatabaseServer  # noqa: E402
from tests.support.moto_server import dummy_aws_environment, running_moto_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_cluster() -> DatabaseServer:
    """A private PostgreSQL cluster (scram-sha-256 everywhere, md5 for logins["md5"])."""
    bindir = _pg.find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl/postgres) on this machine and no pgserver wheel")
    with _pg.running_cluster(bindir) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_server() -> DatabaseServer:
    """A private MariaDB server; every account needs a password over TCP."""
    binaries = _mysql.find_binaries()
    if binaries is None:
        pytest.skip("no MariaDB/MySQL server binary on this machine")
    with _mysql.running_server(*binaries) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's STANDALONE server (a stand-in for AWS APIs over real HTTP) on a free 127.0.0.1 port."""
    with dummy_aws_environment(tmp_path_factory.mktemp("aws")):
        with running_moto_server() as server:
            yield server
