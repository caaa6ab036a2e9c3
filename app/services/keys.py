"""API keys: bearer tokens stored as SHA-256 hashes, and the caller every query is scoped to."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import ApiKey

TOKEN_PREFIX = "si_"


def hash_token(token: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, name: str) -> tuple[ApiKey, str]:
    """A new key and its token; the token is not stored and cannot be shown again."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, token_hash=hash_token(token), prefix=token[:10])
    session.add(key)
    session.flush()
    return key, token


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, key_ref: str) -> ApiKey:
    """Revoke by id or by the token prefix that `keys list` shows."""
    key = None
    try:
        key = session.get(ApiKey, uuid.UUID(key_ref))
    except ValueError:
        matches = list(session.scalars(select(ApiKey).where(ApiKey.prefix == key_ref)))
        key = matches[0] if len(matches) == 1 else None
    if key is None:
        raise NotFound(f"no API key {key_ref!r}")
    key.revoked_at = key.revoked_at or datetime.now(UTC)
    session.flush()
    return key


def authenticate(session: Session, token: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.token_hash == hash_token(token)))
    if key is None or key.revoked_at is not None:
        return None
    return key


@dataclass(frozen=True)
class Caller:
    """Who is asking. `key_id` is None only when keys are off (the API is on loopback)."""

    key_id: uuid.UUID | None

    def owns(self, owner_key_id: uuid.UUID | None) -> bool:
        return self.key_id is None or owner_key_id == self.key_id

    def scope(self, owner_column: Any) -> ColumnElement[bool]:
        """A WHERE clause limiting a query to the caller's rows."""
        return true() if self.key_id is None else owner_column == self.key_id


ANYONE = Caller(None)
