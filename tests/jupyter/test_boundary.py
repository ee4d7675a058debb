"""DESIGN §3: the notebook side reaches the gateway over HTTP and the wire protocols only. Only
`sdm_jupyter.demo` (the `sdm demo` join) may import sdm_proxy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sdm_jupyter"


def test_no_sdm_proxy_imports_outside_the_demo():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "demo" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] == "sdm_proxy"]
    assert offenders == []


def test_importing_the_notebook_side_loads_no_gateway_code():
    code = ("import sys, sdm_jupyter, sdm_jupyter.magic, sdm_jupyter.server.extension, sdm_jupyter.db\n"
            "print(sorted(m for m in sys.modules if m.startswith('sdm_proxy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_demo_is_registered_as_an_sdm_command():
    from importlib.metadata import entry_points

    [ep] = [e for e in entry_points(group="sdm.commands") if e.name == "demo"]
    assert ep.value == "sdm_jupyter.demo.cli:demo"
