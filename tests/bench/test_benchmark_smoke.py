"""The benchmark harness (`python -m benchmarks`) end to end with tiny sizes: every section runs
against the real `sdm gateway` process and the private cluster, and the results files are complete.

Nothing here asserts a time or a ratio: speed is reported by the harness, never enforced in tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import postgres_cluster

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("bulk", "pgbench", "connect", "notebook", "audit", "memory")
IDLE, AUDIT_TX = 5, 20


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    bindir = postgres_cluster.find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb/pg_ctl/postgres) on this machine")
    if not (bindir / "pgbench").exists():
        pytest.skip(f"no pgbench in {bindir}")
    out = tmp_path_factory.mktemp("bench-results")
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--rows", "2000", "--repeat", "1", "--connects", "3",
           "--pgbench-seconds", "1", "--idle", str(IDLE), "--notebook-repeat", "1", "--audit-tx", str(AUDIT_TX),
           "--audit-events", "500", "--audit-producers", "2", "--no-pgbouncer", "--out", str(out)]
    if importlib.util.find_spec("sql") is None:  # JupySQL comes with the `bench` extra
        cmd.append("--no-jupysql")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDM_", "PG", "JUPYTERHUB_"))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    return out, json.loads((out / "latest.json").read_text()), proc


def test_every_section_ran_without_error(bench_run):
    _out, results, proc = bench_run
    assert results["profile"] == "quick"
    assert list(results["sections"]) == list(SECTIONS)
    for name in SECTIONS:
        assert "error" not in results["sections"][name], (name, results["sections"][name])
    # one progress line per section on stderr, with elapsed seconds
    for name in SECTIONS:
        assert re.search(rf"^\[\s*\d+\.\ds\] {name}: done in ", proc.stderr, re.M), proc.stderr


def test_the_gateway_measured_is_the_real_sdm_gateway_process(bench_run):
    _out, results, _proc = bench_run
    argv = results["sections"]["memory"]["gateway"]["pid_cmdline"]
    assert any(Path(a).name == "sdm" for a in argv) and "gateway" in argv, argv
    memory = results["sections"]["memory"]
    assert memory["idle_sessions"]["sessions"] == IDLE and memory["idle_sessions"]["answered_after_hold"] == IDLE
    assert memory["streaming"]["peak_rss_mb"] > 0
    for phase in (memory["streaming"], memory["idle_sessions"]):  # an audit chainer would be counted too
        assert phase["chainer_private_mb"] is None, phase  # the default --audit-chainer thread forks none
        assert phase["total_peak_mb"] == phase["peak_rss_mb"], phase


def test_audit_lost_nothing_and_the_chain_verifies(bench_run):
    _out, results, _proc = bench_run
    e2e = results["sections"]["audit"]["end_to_end"]
    assert e2e["sent"] == e2e["expected"] == 16 * AUDIT_TX
    assert e2e["recorded"] == e2e["sent"] and e2e["lost"] == 0
    assert e2e["verified"] and e2e["verify"]["exit_code"] == 0
    for key, chainer in (("component", "thread"), ("component_process", "process")):
        component = results["sections"]["audit"][key]
        assert component["chainer"] == chainer, component  # `process` forks, as `sdm gateway` does
        assert component["lost"] == 0 and component["verified"], component


def test_dataframes_have_every_row_and_the_same_values(bench_run):
    _out, results, _proc = bench_run
    checks = results["sections"]["notebook"]["checks"]
    assert checks["rows_ok"] and checks["columns_ok"] and checks["sample_values_identical"], checks
    assert set(checks["rows"]) >= {"sdm_sql", "read_sql"}


def test_result_files_table_machine_and_no_secrets(bench_run):
    out, results, proc = bench_run
    md = (out / "latest.md").read_text()
    assert "| row | direct | gateway | PgBouncer / JupySQL | ratio | bar | met |" in md
    keys = {row["key"] for row in results["table"]}
    assert {"bulk", "pgbench_c1_latency", "pgbench_c16_tps", "connect", "notebook", "audit_capacity",
            "audit_end_to_end", "memory_streaming", "memory_idle_sessions"} <= keys
    for field in ("cpu_model", "cores", "ram_gib", "kernel", "python", "postgresql", "packages", "git", "date"):
        assert results["machine"].get(field), field
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert results["chart"].startswith("not drawn")
    # passwords (pw_...), session tokens (sdms....) and API keys (sdmk_...) never reach a results file
    for text in (md, (out / "latest.json").read_text(), proc.stdout):
        assert not re.search(r"pw_[\w-]{8}|sdms\.\w|sdmk_\w", text)


def test_pgbench_ran_through_every_path_including_the_reference_forwarder(bench_run):
    _out, results, _proc = bench_run
    pgbench = results["sections"]["pgbench"]
    for clients in ("c1", "c16"):
        for target in ("direct", "forwarder", "gateway"):
            run = pgbench[clients][target]
            assert "error" not in run and run["tps"] > 0 and run["failed"] == 0, (clients, target, run)
    row = next(r for r in results["table"] if r["key"] == "pgbench_forwarder")
    assert row["met"] is None and "reference" in row["label"]
