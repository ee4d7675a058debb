"""What ``sdm gateway`` loads at start: nothing it does not need at run time (issue #6, memory bar).

boto3/botocore cost ~10 MB of RSS and ~150 ms of start-up; only an ``aws-sm:`` secret reference or
the ``aws-kms`` key provider needs them, and both import them on first use. Each check runs in a
fresh interpreter, since this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AWS_MODULES = ("boto3", "botocore", "s3transfer")


def _modules_after(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it must leave a JSON-able ``result`` (a dict)."""
    program = (textwrap.dedent(code)
               + "\nimport json, sys\nresult['modules'] = sorted(sys.modules)\nprint(json.dumps(result))\n")
    proc = subprocess.run([sys.executable, "-c", program], check=False, capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["sdm_proxy.gateway", "sdm_proxy.cli.main", "sdm_proxy.api.app",
                                    "sdm_proxy.control.unlock", "sdm_proxy.vault.secret_refs"])
def test_gateway_modules_do_not_import_boto3(module):
    loaded = set(_modules_after(f"import {module}\nresult = {{}}")["modules"])
    assert module in loaded
    assert not loaded & set(AWS_MODULES), f"{module} imports {sorted(loaded & set(AWS_MODULES))}"


def test_gateway_module_does_not_load_the_listeners():
    """serve() imports each listener only when it runs, so `--mysql off` never loads MySQL code."""
    loaded = _modules_after("import sdm_proxy.gateway\nresult = {}")["modules"]
    assert not [m for m in loaded if m.startswith(("sdm_proxy.wire.mysql", "sdm_proxy.wire.postgres"))]


def test_aws_sm_reference_loads_boto3_on_first_use(tmp_path):
    """The lazy import still works: an aws-sm: reference without AWS credentials fails as a
    VaultError with the fixed phrase (built from botocore's exception types), not an ImportError."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    out = _modules_after("""
        import sys
        from sdm_proxy.errors import VaultError
        from sdm_proxy.vault.secret_refs import resolve_secret_ref
        result = {"before": "boto3" in sys.modules}
        try:
            resolve_secret_ref("aws-sm:prod/db#password", aws_endpoint_url="http://127.0.0.1:9", region="eu-west-1")
        except VaultError as exc:
            result["error"] = exc.message
    """, env=env)
    assert out["before"] is False
    assert "boto3" in out["modules"]
    assert out["error"].startswith("no usable AWS credentials for AWS Secrets Manager")
    assert "prod/db" in out["error"]
