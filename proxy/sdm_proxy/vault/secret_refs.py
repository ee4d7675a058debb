"""Secret references: a credential that names where its secret lives instead of holding it sealed.

Supported schemes:

``aws-sm:<secret name or ARN>[#json_key]``
    AWS Secrets Manager ``GetSecretValue``. With ``#json_key`` the secret string is parsed as a JSON
    object and that (string) field is the secret, e.g. ``aws-sm:prod/db#password`` for RDS-style
    secrets. Without it, the whole SecretString (or SecretBinary) is the secret.
``file:/absolute/path``
    A file readable by the gateway, e.g. a mounted Kubernetes secret. One trailing newline
    (``\\n`` or ``\\r\\n``) is stripped, since ``echo`` and most editors add one.

Not yet supported: HashiCorp Vault (``vault:...``). Such references are refused up front with a
``UsageError`` rather than accepted and failing at the first connect.

Why so strict about the syntax: a reference is checked when an admin stores it, so a typo is
reported then, not at an analyst's first query. Error messages never echo a malformed reference,
because a password pasted into ``--secret-ref`` by mistake must not land in a terminal or log.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError, VaultError
from .secret import SecretValue

# boto3 (``._aws``) is imported only when an aws-sm: reference is resolved: it costs ~10 MB of RSS
# and ~150 ms of start-up, and a gateway with file: references or sealed secrets never needs it.

AWS_SM_SCHEME = "aws-sm"
FILE_SCHEME = "file"
VAULT_SCHEME = "vault"
SCHEMES = (AWS_SM_SCHEME, FILE_SCHEME)

MAX_REF_CHARS = 4096
MAX_SECRET_FILE_BYTES = 64 * 1024  # a DB password, not a data file; also stops reads of /dev/zero
_SCHEME_RE = re.compile(r"[a-z][a-z0-9+.-]{0,15}")
_SM_NAME_RE = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_SM_ARN_RE = re.compile(r"arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]{1,512}")
_JSON_KEY_RE = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_HINT = "expected aws-sm:<secret name or ARN>[#json_key] or file:/absolute/path"


@dataclass(frozen=True)
class SecretRef:
    scheme: str
    target: str  # Secrets Manager id/ARN, or an absolute file path
    json_key: str | None = None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}" + (f"#{self.json_key}" if self.json_key is not None else "")


def validate_secret_ref(ref: str) -> SecretRef:
    """Parse ``ref``; raise ``UsageError`` for unknown schemes or malformed references."""
    if not isinstance(ref, str) or not ref:
        raise UsageError(f"a secret reference must be a non-empty string: {_HINT}")
    if len(ref) > MAX_REF_CHARS:
        raise UsageError(f"secret reference is too long: {_HINT}")
    scheme, sep, rest = ref.partition(":")
    if not sep or not _SCHEME_RE.fullmatch(scheme):
        raise UsageError(f"not a secret reference (no SCHEME: prefix): {_HINT}")
    if scheme == VAULT_SCHEME:
        raise UsageError(
            "HashiCorp Vault references (vault:...) are not supported yet; "
            "use aws-sm:<secret name or ARN>[#json_key] or file:/absolute/path"
        )
    if scheme == AWS_SM_SCHEME:
        return _parse_aws_sm(rest)
    if scheme == FILE_SCHEME:
        return _parse_file(rest)
    # Not quoted: a pasted password that happens to hold a ':' would show its first part (review).
    raise UsageError(f"unknown secret reference scheme (before the ':'): {_HINT}")


def _parse_aws_sm(rest: str) -> SecretRef:
    secret_id, sep, json_key = rest.partition("#")  # '#' cannot occur in a secret name or ARN
    if not (_SM_NAME_RE.fullmatch(secret_id) or _SM_ARN_RE.fullmatch(secret_id)):
        raise UsageError(
            "aws-sm reference has a malformed secret id: use a secret name (letters, digits and "
            "/_+=.@-, up to 512 characters) or a full arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME"
        )
    if sep and not _JSON_KEY_RE.fullmatch(json_key):
        raise UsageError("aws-sm reference has an empty or malformed #json_key (1-256 printable characters)")
    return SecretRef(AWS_SM_SCHEME, secret_id, json_key if sep else None)


def _parse_file(rest: str) -> SecretRef:
    if rest.startswith("//"):
        raise UsageError("file reference must be file:/absolute/path (not a file:// URL)")
    if not rest.startswith("/"):
        raise UsageError("file reference must name an absolute path: file:/absolute/path")
    if any(ord(c) < 0x20 or c == "\x7f" for c in rest):
        raise UsageError("file reference contains control characters")
    if ".." in rest.split("/"):
        raise UsageError("file reference must not contain '..' components")
    return SecretRef(FILE_SCHEME, rest)


FileGuard = Callable[[str, os.stat_result], None]


def resolve_secret_ref(
    ref: str | SecretRef, *, aws_endpoint_url: str | None = None, region: str | None = None,
    file_guard: FileGuard | None = None,
) -> SecretValue:
    """Fetch the secret a reference names. Failures raise ``VaultError`` (never containing the secret).

    ``file_guard(real_path, stat)``: called with the file a ``file:`` reference actually opened,
    before anything is read from it; it raises to refuse that file."""
    parsed = ref if isinstance(ref, SecretRef) else validate_secret_ref(ref)
    if parsed.scheme == FILE_SCHEME:
        return _read_secret_file(parsed.target, file_guard)
    if parsed.scheme == AWS_SM_SCHEME:
        return _fetch_aws_sm(parsed, aws_endpoint_url, region)
    raise UsageError(f"unknown secret reference scheme {parsed.scheme!r}: {_HINT}")


# file: -------------------------------------------------------------------------------------------
def _opened_path(fd: int, path: str) -> str:
    """The real path of the file ``fd`` is (Linux names it in /proc); where that is not available,
    the path resolved now, which a swapped symlink could still fool."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def _open_guarded(path: str, flags: int, guard: FileGuard) -> int:
    """Open ``path`` for reading only once ``guard`` accepted the file it names: first as a bare
    handle (O_PATH, which opens nothing: a device's open() never runs), checked, and refused unless
    a regular file; then that very file again through /proc, with no second path lookup that a
    swapped symlink could redirect. Without /proc (a chroot), the path is opened again and must
    be the same file: a swap in between is caught, though only after that open."""
    o_path = getattr(os, "O_PATH", 0)
    handle = os.open(path, (o_path or os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(handle)
        guard(_opened_path(handle, path), st)
        if not stat.S_ISREG(st.st_mode):
            raise VaultError(f"secret file {path} is not a regular file")
        if not o_path:
            handle, fd = -1, handle  # already open for reading: hand it over
            return fd
        try:
            return os.open(f"/proc/self/fd/{handle}", flags)
        except FileNotFoundError:  # no /proc here: open the path again, and it must be the same file
            fd = os.open(path, flags)
            again = os.fstat(fd)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                raise VaultError(f"secret file {path} changed while it was being opened") from None
            return fd
    finally:
        if handle >= 0:
            os.close(handle)


def _read_secret_file(path: str, guard: FileGuard | None = None) -> SecretValue:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:  # follows symlinks on purpose: Kubernetes secret mounts are symlinks into ..data/
        fd = os.open(path, flags) if guard is None else _open_guarded(path, flags, guard)
    except FileNotFoundError:
        raise VaultError(f"secret file {path} is missing") from None
    except PermissionError:
        raise VaultError(f"secret file {path} is not readable by the gateway (permission denied)") from None
    except OSError as exc:
        raise VaultError(f"secret file {path} cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # O_NONBLOCK above keeps a FIFO from hanging us here
            raise VaultError(f"secret file {path} is not a regular file")
        chunks, size = [], 0
        while size <= MAX_SECRET_FILE_BYTES and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise VaultError(f"secret file {path} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if size > MAX_SECRET_FILE_BYTES:
        raise VaultError(f"secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; not a secret?")
    data = b"".join(chunks)
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise VaultError(f"secret file {path} is empty")
    if _looks_like_a_gateway_key(data):
        raise VaultError(f"secret file {path} holds a private key or an sdm key, not a database password; "
                         "it is not sent anywhere")
    return SecretValue(data)


def _looks_like_a_gateway_key(data: bytes) -> bool:
    """A copy of the gateway's own keys under another name (a backup, a hard link that survived a
    rotation) must not go upstream as a "password": PEM private keys, a master key file, API keys."""
    head = data.lstrip()[:64]
    return (b"PRIVATE KEY-----" in data or head.startswith(b"sdmk_")
            or (head.startswith(b"{") and b'"keys"' in data and b'"key"' in data))


# aws-sm: -----------------------------------------------------------------------------------------
def _fetch_aws_sm(ref: SecretRef, endpoint_url: str | None, region: str | None) -> SecretValue:
    from ._aws import AWS_ERRORS, aws_client

    if region is None and ref.target.startswith("arn:"):
        region = ref.target.split(":")[3]  # an ARN names its region
    client = aws_client("secretsmanager", region=region, endpoint_url=endpoint_url)
    error: VaultError | None = None
    try:
        # The response goes straight into _extract and is never bound here, so no frame that can
        # end up in a traceback (or an error reporter's "local variables") holds the secret.
        value, problem = _extract(client.get_secret_value(SecretId=ref.target), ref)
    except AWS_ERRORS as exc:
        error = _sm_failure(exc, ref, endpoint_url)
    if error is not None:  # raised outside the except block: nothing of botocore's rides along
        raise error
    if problem is not None:
        raise VaultError(problem)
    assert value is not None
    return value


def _extract(resp: dict[str, Any], ref: SecretRef) -> tuple[SecretValue | None, str | None]:
    """Pick the secret out of a GetSecretValue response. Returns (value, None) or (None, problem)."""
    where = f"AWS Secrets Manager secret {ref.target}"
    raw: str | bytes | None = resp.get("SecretString")
    if raw is None:
        raw = resp.get("SecretBinary")
    if not isinstance(raw, (str, bytes)):
        return None, f"{where} has no SecretString or SecretBinary value"
    if ref.json_key is None:
        if not raw:
            return None, f"{where} is empty"
        return _as_secret(raw, where)
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = None  # the decode error is dropped: its .doc attribute is the whole secret
    if not isinstance(parsed, dict):
        return None, f"{where} is not a JSON object, so #{ref.json_key} cannot select a field"
    if ref.json_key not in parsed:
        return None, f"{where} has no field {ref.json_key!r}"
    field = parsed[ref.json_key]
    if not isinstance(field, str) or not field:
        return None, f"field {ref.json_key!r} of {where} is not a non-empty string"
    return _as_secret(field, where)


def _as_secret(value: str | bytes, where: str) -> tuple[SecretValue | None, str | None]:
    if isinstance(value, bytes):
        return SecretValue(value), None
    try:
        return SecretValue.from_text(value), None
    except ValueError:  # lone surrogates; from_text's error carries no text
        return None, f"{where} is not valid Unicode text"


def _sm_failure(exc: BaseException, ref: SecretRef, endpoint_url: str | None) -> VaultError:
    from ._aws import aws_error_code, describe_aws_failure

    reason = describe_aws_failure(exc, "AWS Secrets Manager", endpoint_url)
    if reason is not None:
        return VaultError(f"{reason} while reading secret {ref.target}")
    code = aws_error_code(exc)
    if code == "ResourceNotFoundException":
        return VaultError(f"AWS Secrets Manager secret {ref.target} was not found (check the name/ARN and region)")
    if code in {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"}:
        return VaultError(f"AWS Secrets Manager refused the gateway's AWS identity ({code}) for secret {ref.target}")
    if code == "DecryptionFailure":
        return VaultError(f"AWS Secrets Manager could not decrypt secret {ref.target} (its KMS key refused)")
    if code == "InvalidRequestException":
        return VaultError(
            f"AWS Secrets Manager secret {ref.target} cannot be read now (deleted or scheduled for deletion?)"
        )
    return VaultError(f"AWS Secrets Manager failed ({code}) reading secret {ref.target}")
