"""SQLAlchemy models of the control-plane state.

The schema is owned by Alembic (``migrations/``); these classes are its mirror. Times are stored as
timezone-aware UTC. No column ever holds a plain DB secret or a plain API key / session token.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator):
    """A DateTime that always comes back timezone-aware in UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UtcDateTime column")
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    api_keys: Mapped[list["ApiKey"]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiKey(Base):
    """An API key is shown once; we keep its public prefix and a hash of the whole key."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The key of the same user that minted this one (a user may mint their own): revoking that key
    # revokes this one too. None when an admin minted it, or from before schema 0003.
    parent_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)

    user: Mapped[User] = relationship(back_populates="api_keys")


class Role(Base):
    __tablename__ = "roles"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class RoleMember(Base):
    __tablename__ = "role_members"
    __table_args__ = (UniqueConstraint("role_id", "user_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class Datasource(Base):
    __tablename__ = "datasources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    type: Mapped[str] = mapped_column(String(16))  # postgres | mysql
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    database: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tls_mode: Mapped[str] = mapped_column(String(16), default="disable")
    ca_file: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    credentials: Mapped[list["Credential"]] = relationship(
        back_populates="datasource", cascade="all, delete-orphan"
    )


class Credential(Base):
    """A named DB login. Either ``sealed`` (envelope JSON) or ``secret_ref`` is set, never both."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("datasource_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    datasource_id: Mapped[int] = mapped_column(ForeignKey("datasources.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    db_username: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer, default=1)
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    secret_ref: Mapped[str | None] = mapped_column(Text, nullable=True)
    # With secret_ref: the reference itself sealed for this row's context (destination included),
    # so that neither the reference nor where the secret goes can be changed without the key.
    ref_binding: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

    datasource: Mapped[Datasource] = relationship(back_populates="credentials")

    def __repr__(self) -> str:  # never show the envelope, even though it is ciphertext
        return f"Credential({self.name!r}, db_user={self.db_username!r}, v{self.version})"


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("role_id", "credential_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("roles.id", ondelete="CASCADE"))
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Grant(Base):
    """A temporary, direct user → credential grant."""

    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    credential_id: Mapped[int] = mapped_column(ForeignKey("credentials.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Session(Base):
    """A user session. The token is signed and carries this row's id; the row makes it revocable."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    client: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The API key that created it: revoking the key revokes the session. None when a JupyterHub
    # token vouched for the user, or from before schema 0003.
    api_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class ProxyInstance(Base):
    """An enrolled gateway process: its Ed25519 public key signs unlock requests."""

    __tablename__ = "proxy_instances"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))
    enrolled_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    enrolled_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class UsedNonce(Base):
    """Nonces of accepted unlock requests, kept until their timestamp window has passed."""

    __tablename__ = "used_nonces"
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    proxy_id: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class AuditEvent(Base):
    """One hash-chained audit record. ``body`` is the canonical JSON the hash covers."""

    __tablename__ = "audit_events"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # Not indexed: random ids put every insert on a random index page (see migration 0002);
    # spool recovery finds recent ids through ``ts`` (``AuditReader.known_ids``).
    id: Mapped[str] = mapped_column(String(36))
    ts: Mapped[str] = mapped_column(String(40), index=True)
    type: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    body: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain's tip (a single row), locked by each append so writers serialise."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """An Ed25519 signature over (seq, hash) of the chain at some point."""

    __tablename__ = "audit_checkpoints"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(40))
    signature: Mapped[str] = mapped_column(String(128))
