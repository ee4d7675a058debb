"""``SecretValue``: the one type a plain DB secret travels in.

Why a type and not ``bytes``: every accidental path to the outside world (``repr`` in a log line,
an f-string in an error message, a pickled object in a cache, a local variable captured by an error
reporter) goes through a dunder method, so closing those methods closes the accidents. Reading the
secret takes a visible ``.reveal()`` call, which is easy to grep for and review.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

_MASK = "SecretValue(***)"


class SecretValue:
    """An immutable wrapper around secret bytes that never shows them."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | memoryview):
        if isinstance(value, str):
            # A str would be silently encoded one way here and another way elsewhere: be explicit.
            raise TypeError("SecretValue wraps bytes; use SecretValue.from_text() for text")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"SecretValue wraps bytes, not {type(value).__name__}")
        object.__setattr__(self, "_value", bytes(value))

    @classmethod
    def from_text(cls, text: str) -> "SecretValue":
        if not isinstance(text, str):
            raise TypeError(f"from_text() takes str, not {type(text).__name__}")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            data = None  # the codec error holds the whole text in .object: don't let it escape
        if data is None:
            raise ValueError("secret text is not valid Unicode (it contains a lone surrogate)")
        return cls(data)

    def reveal(self) -> bytes:
        """The secret itself. Call it only where the plain value is really needed (upstream login)."""
        return self._value

    # never show the value ------------------------------------------------------------------
    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        # Ignore the spec: "{:s}", "{!r}", "{:>20}" all show the mask, never the value.
        return _MASK

    # never leave the process ---------------------------------------------------------------
    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SecretValue cannot be pickled (it would write the secret out in clear)")

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretValue cannot be pickled (it would write the secret out in clear)")

    def __getstate__(self) -> NoReturn:
        raise TypeError("SecretValue cannot be pickled (it would write the secret out in clear)")

    # copy.copy/deepcopy go through __reduce_ex__; the value is immutable, so sharing is a copy.
    def __copy__(self) -> "SecretValue":
        return self

    def __deepcopy__(self, memo: dict) -> "SecretValue":
        return self

    # immutability -----------------------------------------------------------------------------
    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    # comparison -------------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        # Constant time, so a comparison can't be turned into a byte-by-byte guessing oracle.
        return hmac.compare_digest(self._value, other._value)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    # A hash of the secret would be a cheap fingerprint to brute-force offline: stay unhashable.
    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)
