"""Fixtures for the wire tests: one real gateway stack per test session (see ``stack.py``)."""

from __future__ import annotations

import logging

import pytest
from sdm_proxy.gateway import enrol_local_proxy, in_process_unlock_client
from sdm_proxy.wire.postgres import start_postgres_listener

from tests.wire.stack import Gateway, LoopThread, build_state, make_policy_check


@pytest.fixture(scope="session")
def gateway(pg_cluster, tmp_path_factory) -> Gateway:
    state, actors, tokens = build_state(tmp_path_factory.mktemp("wire") / "sdm", pg_cluster)
    identity = enrol_local_proxy(state.cp)
    client = in_process_unlock_client(state.cp, identity)  # as `sdm gateway` builds it
    loop = LoopThread()

    async def start():
        return await start_postgres_listener(
            "127.0.0.1", 0, unlock_client=client, audit_log=state.cp.audit,
            policy_check=make_policy_check(state.cp), policy_interval=0.5,
            warm_logins=True)  # as `sdm gateway` runs by default: every wire test meets the spares

    listener = loop.run(start())
    gw = Gateway(state, pg_cluster, loop, listener, "127.0.0.1", listener.port, tokens, actors)
    # Everything the gateway logs during the wire tests, for the leak test.
    gw.log_records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: gw.log_records.append(logging.Formatter().format(record))
    sdm_logger = logging.getLogger("sdm")
    sdm_logger.addHandler(handler)
    previous_level = sdm_logger.level
    sdm_logger.setLevel(logging.DEBUG)
    yield gw
    sdm_logger.removeHandler(handler)
    sdm_logger.setLevel(previous_level)
    loop.run(listener.close())
    loop.stop()
    state.close()
