"""API tokens of the ``token`` auth mode: issue, authenticate, list, revoke.

A token is an opaque random secret (256 bits from ``secrets``) bound to one
user, one project and a set of roles, with an optional expiry. Only its
SHA-256 is stored: the secret is shown once, when it is issued. A plain
(unsalted, fast) hash is enough because the secret is high-entropy random
data, not a password; lookups go by the hash, so the comparison is an index
probe and leaks nothing about other tokens.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator.models import ApiToken
from orchestrator.models import new_id

ROLES = ("admin", "member", "reader")
PREFIX = "orch_"
# User and project ids that can be put in a URL segment and a String(255) column.
IDENTIFIER = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def hash_token(secret: str) -> str:
    """The stored form of a secret: lower-case hex SHA-256."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def issue(session: Session, *, user_id: str, project_id: str, roles: list[str] | tuple[str, ...],
          now: dt.datetime, expires_at: dt.datetime | None = None,
          description: str | None = None) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret (which is not stored).

    :raises InvalidInput: unknown role, no role, bad user/project id, expiry in the past.
    """
    if not IDENTIFIER.fullmatch(user_id or ""):
        raise errors.InvalidInput(f"Invalid user id {user_id!r}: use 1-64 characters of "
                                  "letters, digits, '_', '.', '@' and '-'.")
    # Project ids appear in URLs (/v3/{project_id}/...), so they follow the URL rule.
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", project_id or ""):
        raise errors.InvalidInput(f"Invalid project id {project_id!r}: use 1-64 characters of "
                                  "letters, digits, '_' and '-'.")
    wanted = sorted({r.strip().lower() for r in roles if r and r.strip()})
    if not wanted:
        raise errors.InvalidInput("A token needs at least one role: "
                                  f"{', '.join(ROLES)}.")
    unknown = [r for r in wanted if r not in ROLES]
    if unknown:
        raise errors.InvalidInput(f"Unknown role(s) {', '.join(unknown)}; roles are "
                                  f"{', '.join(ROLES)}.")
    if expires_at is not None and expires_at <= now:
        raise errors.InvalidInput(f"The expiry {expires_at.isoformat()} is not in the future.")
    if description is not None and len(description) > 255:
        raise errors.InvalidInput("The description is longer than 255 characters.")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(id=new_id(), token_hash=hash_token(secret), user_id=user_id,
                     project_id=project_id, roles=",".join(wanted), description=description,
                     created_at=now, expires_at=expires_at)
    session.add(token)
    session.flush()
    return token, secret


def authenticate(session: Session, secret: str, *, now: dt.datetime) -> ApiToken:
    """The live token with this secret.

    :raises NotAuthenticated: unknown, revoked or expired (one message for all three,
        so a caller learns nothing about which tokens exist).
    """
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    if token is None or token.revoked_at is not None or \
            (token.expires_at is not None and token.expires_at <= now):
        raise errors.NotAuthenticated("The token is invalid, expired or revoked.")
    return token


def state(token: ApiToken, *, now: dt.datetime) -> str:
    """active, expired or revoked."""
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "expired"
    return "active"


def list_tokens(session: Session, *, now: dt.datetime, project_id: str | None = None,
                include_inactive: bool = False) -> list[ApiToken]:
    """Tokens, oldest first; only active ones unless ``include_inactive``."""
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if project_id is not None:
        query = query.where(ApiToken.project_id == project_id)
    rows = list(session.scalars(query))
    if not include_inactive:
        rows = [t for t in rows if state(t, now=now) == "active"]
    return rows


def revoke(session: Session, token_id: str, *, now: dt.datetime) -> ApiToken:
    """Revoke a token by id (revoking twice keeps the first time).

    :raises NotFound:
    """
    token = session.get(ApiToken, token_id)
    if token is None:
        raise errors.NotFound(f"Token {token_id} could not be found.")
    if token.revoked_at is None:
        token.revoked_at = now
    return token
