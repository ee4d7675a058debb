"""``sdm demo``: a sample database, a fresh gateway, JupyterLab on the quickstart notebook.

    sdm demo                                   # JupyterLab opens notebooks/quickstart.ipynb; Ctrl-C stops all
    sdm demo --no-browser                      # for servers: prints the URL instead
    sdm demo --execute notebooks/quickstart.ipynb   # headless: run it as `analyst`, print the audit trail

Everything lives in a temporary directory that is removed on exit (``--keep`` keeps it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _say(text: str) -> None:
    click.echo(f"sdm demo: {text}", err=True)


class Demo(contextlib.ExitStack):
    """Embedded PostgreSQL + seeded shop + $SDM_HOME + gateway; torn down in reverse order."""

    def __init__(self, keep: bool = False, accounts=None):
        super().__init__()
        self.keep = keep
        self._accounts = accounts  # tests pass their own to search for leaks; else generated here

    def __enter__(self) -> "Demo":
        super().__enter__()
        from . import dataset, world
        from .gateway import start_gateway
        from .postgres import EmbeddedPostgres

        self.root = Path(tempfile.mkdtemp(prefix="sdm-demo-"))
        if not self.keep:
            self.callback(shutil.rmtree, self.root, True)
        _say(f"working directory {self.root}")

        self.pg = EmbeddedPostgres.create()
        self.callback(self.pg.stop)
        self.pg.start()
        accounts, self._accounts = self._accounts or dataset.logins(), None
        counts = dataset.seed(self.pg, accounts)
        _say(f"PostgreSQL ({self.pg.bindir}) on 127.0.0.1:{self.pg.port}, database {dataset.DATABASE}: "
             + ", ".join(f"{n:,} {t}" for t, n in counts.items()))

        self.world = world.build(self.root / "sdm-home", self.pg.port, accounts)
        del accounts  # the passwords now live only in the vault (and in the database)
        self.gateway = start_gateway(self.world.home, self.root / "gateway.log")
        self.callback(self.gateway.stop)
        _say(f"gateway ({self.gateway.mode}): API {self.gateway.url}, PostgreSQL listener {self.gateway.postgres}")
        return self

    def kernel_env(self) -> dict[str, str]:
        """What a notebook kernel of the `analyst` user gets: the gateway and an API key, no DB secret."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SDM_", "PG", "JUPYTERHUB_"))}
        env.update(SDM_GATEWAY_URL=self.gateway.url, SDM_GATEWAY_POSTGRES=self.gateway.postgres,
                   SDM_API_KEY=self.world.analyst_key, SDM_HOME=str(self.world.home))
        return env

    def admin_client(self):
        from ..gateway_client import GatewayClient, GatewayConfig

        return GatewayClient(GatewayConfig.discover({}, url=self.gateway.url, api_key=self.world.admin_key))

    def verify(self) -> tuple[bool, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SDM_")}
        env["SDM_HOME"] = str(self.world.home)
        from .gateway import sdm_command

        proc = subprocess.run([*sdm_command(), "audit", "verify"], env=env, capture_output=True, text=True,
                              timeout=120)
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def notebook_events(events: list[dict], notebook: str) -> list[dict]:
    return [e for e in events if (e.get("client") or {}).get("notebook") == notebook]


def format_event(e: dict) -> str:
    client = e.get("client") or {}
    query = " ".join((e.get("query") or "").split())
    if len(query) > 90:
        query = query[:87] + "..."
    fields = [e["ts"][11:23], f"{e['type']:<10}", f"user={e.get('user')}", f"cred={e.get('credential')}",
              f"cell={client.get('cell_id')}", f"rows={e.get('rows')}", f"status={e.get('status')}"]
    return "  ".join(fields) + (f"  {query}" if query else "")


def run_execute(demo: Demo, notebook: Path) -> int:
    from .execute import execute_notebook

    # What Jupyter would call it: the path relative to where we run, else the file name.
    try:
        session_name = str(notebook.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        session_name = notebook.name
    output = demo.root / f"executed-{notebook.name}"
    _say(f"executing {notebook} as analyst (headless)")
    try:
        execute_notebook(notebook.resolve(), env=demo.kernel_env(), session_name=session_name, output=output)
    except Exception as exc:  # noqa: BLE001 - nbclient's CellExecutionError carries the cell's error
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        _say(f"the notebook failed: {type(exc).__name__}: {last}")
        return 1
    with demo.admin_client() as admin:
        events = notebook_events(admin.get("/v1/admin/audit", n=10000), session_name)
    click.echo(f"audit events of {session_name} ({len(events)}):")
    for e in events:
        click.echo("  " + format_event(e))
    ok, summary = demo.verify()
    click.echo(f"sdm audit verify: {summary}")
    users = sorted({e.get("user") for e in events})
    cells = sorted({(e.get("client") or {}).get("cell_id") for e in events} - {None})
    click.echo(f"users: {', '.join(map(str, users))}; cells: {len(cells)}")
    return 0 if ok and events else 1


def run_lab(demo: Demo, notebook: Path, open_browser: bool) -> int:
    workdir = demo.root / "notebooks"
    shutil.copytree(NOTEBOOKS if NOTEBOOKS.is_dir() else notebook.parent, workdir, dirs_exist_ok=True)
    target = workdir / notebook.name
    if not target.exists():
        shutil.copy2(notebook, target)
    argv = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={workdir}", str(target),
            "--ServerApp.jpserver_extensions={'sdm_jupyter': True}"]
    if not open_browser:
        argv.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # containers and CI run as root
    env = demo.kernel_env()
    _say(f"JupyterLab on {target.name} as analyst; Ctrl-C stops everything")
    lab = subprocess.Popen(argv, env=env, cwd=workdir, start_new_session=True)
    try:
        return lab.wait()
    except KeyboardInterrupt:
        _say("stopping JupyterLab, the gateway and PostgreSQL…")
        return 0
    finally:
        if lab.poll() is None:
            lab.send_signal(signal.SIGTERM)
            try:
                lab.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lab.kill()
                lab.wait()


@click.command()
@click.option("--no-browser", is_flag=True, help="Do not open a browser (print JupyterLab's URL).")
@click.option("--execute", "execute", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Run this notebook headless as `analyst`, print its audit events and the verify result.")
@click.option("--keep", is_flag=True, help="Keep the demo's working directory (state, logs) on exit.")
def demo(no_browser: bool, execute: Path | None, keep: bool) -> None:
    """A sample PostgreSQL, a fresh gateway and JupyterLab on notebooks/quickstart.ipynb."""
    started = time.monotonic()
    # A closed terminal (SIGHUP) stops the demo as Ctrl-C and SIGTERM do (review: its gateway,
    # PostgreSQL and JupyterLab, each in a session of its own, went on running, keys on disk).
    stops = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in stops}
    for sig in stops:
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    code = 1
    try:
        with Demo(keep=keep) as d:
            _say(f"ready in {time.monotonic() - started:.1f}s")
            if execute is not None:
                code = run_execute(d, execute)
            else:
                code = run_lab(d, NOTEBOOKS / "quickstart.ipynb", open_browser=not no_browser)
    except KeyboardInterrupt:
        _say("interrupted; everything is stopped")
        code = 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code:
        raise SystemExit(code)
