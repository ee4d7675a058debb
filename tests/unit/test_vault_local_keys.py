"""The local master key file: creation, rotation, and refusing unsafe or broken files."""
from __future__ import annotations

import base64
import json
import os
import pickle
import stat

import pytest

from sdm_proxy.errors import VaultError
from sdm_proxy.home import SdmHome
from sdm_proxy.vault.envelope import EncryptionContext, SealedSecretMismatch, open_, seal
from sdm_proxy.vault.providers.local import LocalKeyProvider, add_master_key, create_master_key_file
from sdm_proxy.vault.secret import SecretValue

CTX = EncryptionContext("prod-db", "superuser", 1)
PLAIN = b"p@ss-rotation"


@pytest.fixture
def key_path(tmp_path):
    path = tmp_path / "home" / "keys" / "master.keys"
    create_master_key_file(path)
    return path


def _keys(path):
    return json.loads(path.read_text())["keys"]


def test_created_file_is_private_and_well_formed(key_path):
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_path.parent).st_mode) == 0o700
    (entry,) = _keys(key_path)
    assert set(entry) == {"id", "key", "created"}
    assert len(base64.b64decode(entry["key"])) == 32


def test_create_refuses_to_overwrite(key_path):
    before = key_path.read_bytes()
    with pytest.raises(VaultError, match="already exists"):
        create_master_key_file(key_path)
    assert key_path.read_bytes() == before


def test_rotation_old_envelopes_still_open_new_ones_use_new_key(key_path):
    provider = LocalKeyProvider(key_path)
    old_id = provider.current_key_id
    old_env = seal(provider, SecretValue(PLAIN), CTX)

    new_id = add_master_key(key_path)
    assert new_id != old_id
    assert [k["id"] for k in _keys(key_path)] == [new_id, old_id]
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600

    rotated = LocalKeyProvider(key_path)
    assert rotated.key_ids == [new_id, old_id]
    assert open_(rotated, old_env, CTX).reveal() == PLAIN
    new_env = seal(rotated, SecretValue(PLAIN), CTX)
    assert json.loads(new_env)["key_id"] == new_id
    assert open_(rotated, new_env, CTX).reveal() == PLAIN


def test_running_provider_picks_up_a_rotation_done_by_another_process(key_path):
    running = LocalKeyProvider(key_path)
    new_id = add_master_key(key_path)  # e.g. `sdm` CLI while the gateway runs
    other = LocalKeyProvider(key_path)
    env = seal(other, SecretValue(PLAIN), CTX)
    assert json.loads(env)["key_id"] == new_id
    assert open_(running, env, CTX).reveal() == PLAIN
    assert running.current_key_id == new_id


def test_key_removed_from_file_cannot_unwrap(key_path, tmp_path):
    env = seal(LocalKeyProvider(key_path), SecretValue(PLAIN), CTX)
    other = tmp_path / "other.keys"
    create_master_key_file(other)
    with pytest.raises(VaultError, match="not in"):
        open_(LocalKeyProvider(other), env, CTX)


def test_same_key_id_with_different_material_is_a_mismatch(key_path, tmp_path):
    env = seal(LocalKeyProvider(key_path), SecretValue(PLAIN), CTX)
    body = json.loads(key_path.read_text())
    body["keys"][0]["key"] = base64.b64encode(os.urandom(32)).decode()
    forged = tmp_path / "forged.keys"
    forged.write_text(json.dumps(body))
    forged.chmod(0o600)
    with pytest.raises(SealedSecretMismatch):
        open_(LocalKeyProvider(forged), env, CTX)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_group_or_world_accessible_key_file_is_refused(key_path, mode):
    key_path.chmod(mode)
    with pytest.raises(VaultError, match="chmod 600") as info:
        LocalKeyProvider(key_path)
    assert f"{mode:04o}" in str(info.value)


def test_chmod_after_start_is_noticed(key_path):
    provider = LocalKeyProvider(key_path)
    key_path.chmod(0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        seal(provider, SecretValue(PLAIN), CTX)


def test_add_master_key_refuses_an_unsafe_file(key_path):
    key_path.chmod(0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        add_master_key(key_path)


def test_missing_key_file(tmp_path):
    with pytest.raises(VaultError, match=r"master key file .* is missing"):
        LocalKeyProvider(tmp_path / "nope.keys")


def test_key_file_deleted_while_running_fails_closed(key_path):
    provider = LocalKeyProvider(key_path)
    env = seal(provider, SecretValue(PLAIN), CTX)
    key_path.unlink()
    with pytest.raises(VaultError, match="is missing"):
        open_(provider, env, CTX)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "corrupt"),
        (b"{not json", "corrupt"),
        (b"[]", '"keys" list'),
        (b'{"v": 1, "keys": []}', "lists no keys"),
        (b'{"v": 9, "keys": [{"id": "a", "key": "AAAA"}]}', "format version"),
        (b'{"v": 1, "keys": ["x"]}', "not an object"),
        (b'{"v": 1, "keys": [{"key": "AAAA"}]}', "has no id"),
        (b'{"v": 1, "keys": [{"id": "a", "key": "AAAA"}]}', "not base64 of 32 bytes"),
        (b'{"v": 1, "keys": [{"id": "a", "key": "%%%"}]}', "not base64 of 32 bytes"),
    ],
)
def test_corrupt_key_file_is_refused(tmp_path, content, reason):
    path = tmp_path / "master.keys"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(VaultError, match=reason) as info:
        LocalKeyProvider(path)
    assert "corrupt" in str(info.value) and info.value.__context__ is None


def test_duplicate_ids_and_non_file_refused(key_path, tmp_path):
    body = json.loads(key_path.read_text())
    body["keys"].append(dict(body["keys"][0]))
    dup = tmp_path / "dup.keys"
    dup.write_text(json.dumps(body))
    dup.chmod(0o600)
    with pytest.raises(VaultError, match="listed twice"):
        LocalKeyProvider(dup)
    directory = tmp_path / "dir.keys"
    directory.mkdir(mode=0o700)
    with pytest.raises(VaultError, match="not a regular file"):
        LocalKeyProvider(directory)


def test_corrupt_message_does_not_echo_key_material(tmp_path):
    material = base64.b64encode(os.urandom(31)).decode()  # wrong length: rejected
    path = tmp_path / "master.keys"
    path.write_text(json.dumps({"v": 1, "keys": [{"id": "a", "key": material}]}))
    path.chmod(0o600)
    with pytest.raises(VaultError) as info:
        LocalKeyProvider(path)
    assert material not in str(info.value)


def test_provider_repr_vars_and_pickle_hide_keys(key_path):
    provider = LocalKeyProvider(key_path)
    material = _keys(key_path)[0]["key"]
    raw = base64.b64decode(material)
    shown = repr(provider) + repr(vars(provider))
    assert material not in shown and raw.hex() not in shown and repr(raw) not in shown
    with pytest.raises(TypeError):
        pickle.dumps(provider)


def test_from_home_uses_default_path(tmp_path):
    home = SdmHome(tmp_path / "sdm")
    create_master_key_file(home.master_key_path)
    assert LocalKeyProvider.from_home(home).path == home.master_key_path
