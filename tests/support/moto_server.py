"""moto's standalone server as a subprocess: a stand-in for AWS APIs over real HTTP.

boto3 talks to it through ``endpoint_url`` exactly as it would talk to AWS (signing, HTTP, JSON
protocol, error parsing), so the gateway's AWS code paths run for real; only the service is fake.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Dummy credentials: moto accepts anything, and these make sure no real account can be reached.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# Variables that could point boto3 at a real profile or endpoint instead of the stand-in.
AMBIENT_AWS_VARS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ROLE_ARN",
                    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    pid: int
    region: str = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def _start(host: str, port: int, log: Path, timeout: float) -> subprocess.Popen | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | DUMMY_AWS_ENV
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None  # died, most likely the port was taken between free_port() and bind
        if _answers(url):
            return proc
        time.sleep(0.1)
    _stop(proc)
    raise RuntimeError(f"moto server did not answer on {url} within {timeout:.0f}s; see {log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def running_moto_server(host: str = "127.0.0.1", timeout: float = 30.0, attempts: int = 3) -> Iterator[MotoServer]:
    """Start ``python -m moto.server`` on a free port, wait until it answers, stop it afterwards."""
    log = Path(tempfile.mkstemp(prefix="moto-server-", suffix=".log")[1])
    proc = None
    for _ in range(attempts):
        port = free_port(host)
        proc = _start(host, port, log, timeout)
        if proc is not None:
            break
    if proc is None:
        raise RuntimeError(f"moto server failed to start after {attempts} attempts; see {log}")
    try:
        yield MotoServer(endpoint_url=f"http://{host}:{port}", pid=proc.pid)
    finally:
        _stop(proc)
        log.unlink(missing_ok=True)


@contextmanager
def dummy_aws_environment(tmpdir: Path) -> Iterator[None]:
    """Point boto3 at dummy credentials and away from any real profile, for the duration."""
    wanted: dict[str, str | None] = {var: None for var in AMBIENT_AWS_VARS} | DUMMY_AWS_ENV | {
        "AWS_CONFIG_FILE": str(tmpdir / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmpdir / "aws-credentials-absent"),
    }
    saved = {var: os.environ.get(var) for var in wanted}  # restore only what we touched
    try:
        for var, value in wanted.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        yield
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
