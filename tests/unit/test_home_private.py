"""$SDM_HOME must be the user's own and writable by no one else (review: a home another local user
created first, or a group-writable one, lets them replace config.json or a key)."""

from __future__ import annotations

import os
import shutil

import pytest
from sdm_proxy.control.bootstrap import init_home
from sdm_proxy.errors import StateError
from sdm_proxy.home import SdmHome


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    home = SdmHome(tmp_path_factory.mktemp("private") / "home")
    init_home(home)
    return home


def _copy(initialised, tmp_path) -> SdmHome:
    copy = tmp_path / "copy"
    shutil.copytree(initialised.root, copy)
    return SdmHome(copy)


def test_a_group_or_world_writable_home_is_refused(initialised, tmp_path):
    home = _copy(initialised, tmp_path)
    home.load_config()
    for mode in (0o770, 0o707):
        os.chmod(home.root, mode)
        with pytest.raises(StateError, match="chmod 700"):
            home.load_config()
    os.chmod(home.root, 0o750)  # group may read (a shared read-only view), not write
    home.load_config()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_home_of_another_user_is_refused_for_use_and_for_init(initialised, tmp_path):
    home = _copy(initialised, tmp_path)
    os.chown(home.root, 65534, -1)
    with pytest.raises(StateError, match="belongs to uid 65534"):
        home.load_config()
    empty = tmp_path / "planted"
    empty.mkdir()
    os.chown(empty, 65534, -1)
    with pytest.raises(StateError, match="belongs to uid 65534"):
        init_home(SdmHome(empty))
    assert list(empty.iterdir()) == []  # nothing was written into it
