"""boto3 plumbing shared by the KMS key provider and the Secrets Manager store.

Three jobs: build (and reuse) clients, turn botocore failures into messages that name the problem
but carry nothing from the response, and stop botocore's DEBUG logging from writing response bodies
(a GenerateDataKey body holds the plaintext data key; a GetSecretValue body holds the DB secret).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ..errors import VaultError

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

_CLIENT_CONFIG = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15)
_clients: dict[tuple[str, str | None, str | None], Any] = {}
_clients_lock = threading.Lock()  # boto3 sessions are not thread-safe while building clients


class _DropBodies(logging.Filter):
    """Drop botocore's DEBUG records that dump HTTP request params and response bodies."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        return not (msg.startswith("Response body") or msg.startswith("Making request for"))


def _install_log_filter() -> None:
    for name in ("botocore.parsers", "botocore.endpoint"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBodies) for f in logger.filters):
            logger.addFilter(_DropBodies())


_install_log_filter()


def aws_client(service: str, *, region: str | None = None, endpoint_url: str | None = None) -> Any:
    """A cached boto3 client (clients are thread-safe once built, and building one costs ~10 ms)."""
    key = (service, region, endpoint_url)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            try:
                client = boto3.session.Session().client(
                    service, region_name=region, endpoint_url=endpoint_url, config=_CLIENT_CONFIG
                )
            except NoRegionError:
                raise VaultError(
                    f"no AWS region configured for {service}: set region in the sdm config or AWS_REGION"
                ) from None
            except ValueError:
                raise VaultError(f"invalid AWS endpoint URL for {service}: {endpoint_url!r}") from None
            _clients[key] = client
    return client


def clear_client_cache() -> None:
    with _clients_lock:
        _clients.clear()


def aws_error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code")
        return str(code)[:64] if code else "ClientError"
    return type(exc).__name__


def describe_aws_failure(exc: BaseException, service: str, endpoint_url: str | None) -> str | None:
    """A fixed-phrase reason for transport/credential problems; None for service-side (ClientError) ones."""
    where = f" at {endpoint_url}" if endpoint_url else ""
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return (
            f"no usable AWS credentials for {service} (use an instance/pod role, AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the gateway's environment)"
        )
    if isinstance(exc, NoRegionError):
        return f"no AWS region configured for {service}: set region in the sdm config or AWS_REGION"
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return f"could not reach {service}{where} ({type(exc).__name__})"
    if isinstance(exc, BotoCoreError):
        return f"{service} call failed ({type(exc).__name__})"
    return None


AWS_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)
