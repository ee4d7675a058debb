"""The front side's TLS: the gateway certificate that ``sdm init`` made (``$SDM_HOME/tls``)."""

from __future__ import annotations

import ssl
from pathlib import Path


def server_tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def gateway_tls_context(tls_dir: str | Path) -> ssl.SSLContext:
    """``tls_dir`` is ``SdmHome.tls_dir`` (gateway.pem + gateway-key.pem)."""
    tls_dir = Path(tls_dir)
    return server_tls_context(tls_dir / "gateway.pem", tls_dir / "gateway-key.pem")
