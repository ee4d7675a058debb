"""How the gateway writes its private files ($SDM_HOME: keys, config.json, gateway.json)."""

from __future__ import annotations

from sdm_proxy.home import write_atomic, write_private


def test_a_symlink_planted_at_the_old_temp_name_is_not_written_through(tmp_path):
    """Review: the temporary file had a fixed name (``gateway.json.tmp``) opened with O_TRUNC, so
    someone able to plant a symlink there had the gateway write its file wherever it pointed."""
    victim = tmp_path / "victim"
    victim.write_text("mine")
    home = tmp_path / "home"
    home.mkdir()
    (home / "gateway.json.tmp").symlink_to(victim)
    write_private(home / "gateway.json", b'{"api": "http://127.0.0.1:8471"}')
    assert victim.read_text() == "mine"
    assert (home / "gateway.json").read_bytes() == b'{"api": "http://127.0.0.1:8471"}'
    assert (home / "gateway.json").stat().st_mode & 0o777 == 0o600


def test_nothing_is_left_behind_and_the_old_file_stays_whole_on_failure(tmp_path, monkeypatch):
    import os

    import pytest

    path = tmp_path / "config.json"
    write_atomic(path, b"old", 0o600)

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        write_atomic(path, b"new", 0o600)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
