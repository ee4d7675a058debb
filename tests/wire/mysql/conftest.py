"""Fixtures for the MySQL listener tests: one real gateway stack per test session (``mysql_stack.py``)."""

from __future__ import annotations

import pytest
from sdm_proxy.gateway import enrol_local_proxy, in_process_unlock_client
from sdm_proxy.wire.mysql import start_mysql_listener

from tests.wire.mysql.mysql_stack import MysqlGateway, build_state
from tests.wire.stack import LoopThread, make_policy_check


@pytest.fixture(scope="session")
def mysql_gateway(mysql_server, tmp_path_factory) -> MysqlGateway:
    state, actors, tokens = build_state(tmp_path_factory.mktemp("mysql-gw") / "sdm", mysql_server)
    identity = enrol_local_proxy(state.cp)
    client = in_process_unlock_client(state.cp, identity)
    loop = LoopThread()

    async def start():
        return await start_mysql_listener(
            "127.0.0.1", 0, unlock_client=client, audit_log=state.cp.audit,
            policy_check=make_policy_check(state.cp), policy_interval=0.5)

    listener = loop.run(start())
    gw = MysqlGateway(state, mysql_server, loop, listener, "127.0.0.1", listener.port, tokens, actors)
    yield gw
    loop.run(listener.close())
    loop.stop()
    state.close()
