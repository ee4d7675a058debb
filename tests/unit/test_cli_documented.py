"""Every `sdm` command has a usage line in docs/cli.md (a command nobody can read about is a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from sdm_proxy.cli.main import cli

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
USAGE_LINES = [line for line in DOC.splitlines() if line.startswith("sdm ")]


def _commands(cmd: click.Command, path: tuple[str, ...]):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path


def test_every_command_has_a_usage_line():
    missing = []
    for path in _commands(cli, ("sdm",)):
        group, name = " ".join(path[:-1]), path[-1]
        # `sdm grant [create] ...`, `sdm audit tail | verify ...`: the group, then the name as a word
        pattern = re.compile(rf"^{re.escape(group)} (.*[\s\[|])?{re.escape(name)}([\s\]|]|$)")
        if not any(pattern.match(line) for line in USAGE_LINES):
            missing.append(" ".join(path))
    assert not missing, f"commands without a usage line in docs/cli.md: {missing}"
