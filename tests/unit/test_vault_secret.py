"""SecretValue never shows, pickles or hashes its content."""
from __future__ import annotations

import copy
import logging
import pickle

import pytest

from sdm_proxy.vault.secret import SecretValue

PLAIN = b"hunter2-\xc3\xa9-s3cr3t"
TEXT = PLAIN.decode()


def test_reveal_returns_the_bytes():
    assert SecretValue(PLAIN).reveal() == PLAIN
    assert SecretValue(bytearray(PLAIN)).reveal() == PLAIN
    assert SecretValue.from_text(TEXT).reveal() == PLAIN


@pytest.mark.parametrize(
    "render",
    [repr, str, ascii, lambda s: f"{s}", lambda s: f"{s!r}", lambda s: f"{s!s}", lambda s: f"{s:>40}",
     lambda s: "{}".format(s), lambda s: "%s %r" % (s, s), lambda s: repr([s, {"k": s}]), lambda s: str((s,))],
)
def test_every_rendering_is_masked(render):
    out = render(SecretValue(PLAIN))
    assert "SecretValue(***)" in out
    assert TEXT not in out and "hunter2" not in out


def test_logging_and_exception_messages_show_the_mask(caplog):
    secret = SecretValue(PLAIN)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("sdm.test").debug("login with %s / %r", secret, secret)
    assert "hunter2" not in caplog.text and "SecretValue(***)" in caplog.text
    assert "hunter2" not in str(ValueError(secret)) + repr(ValueError(secret))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_not_picklable(protocol):
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(SecretValue(PLAIN), protocol=protocol)
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [SecretValue(PLAIN)]}, protocol=protocol)


def test_copy_is_safe_and_shares_the_value():
    secret = SecretValue(PLAIN)
    assert copy.copy(secret).reveal() == PLAIN
    assert copy.deepcopy({"s": secret})["s"].reveal() == PLAIN


def test_equality_constant_time_and_typed():
    assert SecretValue(PLAIN) == SecretValue(PLAIN)
    assert SecretValue(PLAIN) != SecretValue(PLAIN + b"x")
    assert SecretValue(PLAIN) != PLAIN  # never equal to the bare bytes: no accidental unwrapping
    assert not (SecretValue(PLAIN) == TEXT)


def test_unhashable_immutable_len_bool():
    secret = SecretValue(PLAIN)
    with pytest.raises(TypeError):
        hash(secret)
    with pytest.raises(AttributeError):
        secret._value = b"other"
    with pytest.raises(AttributeError):
        secret.extra = 1
    assert len(secret) == len(PLAIN)
    assert secret and not SecretValue(b"")
    assert not hasattr(secret, "__dict__")


def test_str_input_is_refused_without_echo():
    with pytest.raises(TypeError) as info:
        SecretValue(TEXT)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)


def test_from_text_with_lone_surrogate_does_not_echo():
    with pytest.raises(ValueError) as info:
        SecretValue.from_text("hunter2\ud800")
    assert "hunter2" not in str(info.value)
    assert info.value.__context__ is None
