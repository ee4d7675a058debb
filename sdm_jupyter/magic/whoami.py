"""``%sdm whoami``: who the gateway thinks I am, and where it is."""

from __future__ import annotations

from IPython.core.error import UsageError


class WhoAmI(dict):
    """A dict that also reads well as a notebook output (no token in it)."""

    def _repr_pretty_(self, p, cycle) -> None:
        p.text("\n".join(f"{k}: {v}" for k, v in self.items()))


def run(magics, line: str, cell: str | None):
    if line or (cell or "").strip():
        raise UsageError("usage: %sdm whoami (no arguments)")
    client = magics.client
    me = client.whoami()
    session = client.session()
    host, port = client.postgres_address()
    return WhoAmI(user=me.get("user"), admin=bool(me.get("admin")), session_id=me.get("session_id"),
                  session_expires_at=session.expires_at.isoformat(), gateway=client.url,
                  postgres_listener=f"{host}:{port}",
                  identity_from=client.config.identity.source if client.config.identity else None)
