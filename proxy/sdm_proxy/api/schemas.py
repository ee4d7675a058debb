"""Request bodies of the control API. Response bodies are the service layer's plain dicts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class SessionCreate(_Body):
    ttl: str = "1h"
    client: str | None = Field(default=None, max_length=255)


class UserCreate(_Body):
    name: str
    admin: bool = False


class RoleCreate(_Body):
    name: str


class RoleAssign(_Body):
    user: str


class LeaseCreate(_Body):
    datasource: str
    credential: str


class DatasourceCreate(_Body):
    name: str
    type: str
    host: str
    port: int
    database: str | None = None
    tls: str = "disable"
    ca_file: str | None = None


class CredentialCreate(_Body):
    datasource: str
    name: str
    username: str
    password: str | None = Field(default=None, repr=False)
    secret_ref: str | None = None


class CredentialRotate(_Body):
    password: str = Field(repr=False)


class GrantCreate(_Body):
    user: str
    datasource: str
    credential: str
    duration: str = Field(alias="for")


class ProxyEnroll(_Body):
    public_key: str  # base64 of the 32-byte Ed25519 public key
