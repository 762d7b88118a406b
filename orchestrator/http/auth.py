"""Credentials → RequestContext, in one of two modes chosen by ``ORCH_AUTH``.

* ``noauth`` (development, contract §4.2): ``X-Auth-Token: user:project`` or
  HTTP Basic; admin iff the user or project is in ``ORCH_ADMIN_NAMES`` (or
  ``X-Roles`` names admin).
* ``token`` (production): ``X-Auth-Token: <secret>`` issued by
  ``orchestrator token create``; user, project and roles come from the
  stored token, never from request headers.
"""
from __future__ import annotations

import base64
import binascii
import re

from flask import Request

from orchestrator import errors
from orchestrator import tokens
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import Database
from orchestrator.db import utcnow

MODES = ("noauth", "token")
# What a noauth user or project id may be: stored in String(255) columns.
_NOAUTH_ID = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
_MISSING = ("Authentication required: send X-Auth-Token '<user_id>:<project_id>'.",
            "Authentication required: send an API token in X-Auth-Token "
            "(issue one with `orchestrator token create`).")


def authenticate(request: Request, settings: Settings, db: Database, url_project: str | None,
                 request_id: str) -> RequestContext:
    """The caller's context in the configured mode.

    :raises NotAuthenticated: missing, malformed, unknown, expired or revoked credentials.
    """
    if settings.auth == "token":
        return token_context(request, db, request_id)
    return noauth_context(request, settings, url_project, request_id)


def token_context(request: Request, db: Database, request_id: str) -> RequestContext:
    """Look the X-Auth-Token secret up by its hash. :raises NotAuthenticated:"""
    secret = (request.headers.get("X-Auth-Token") or "").strip()
    if not secret:
        raise errors.NotAuthenticated(_MISSING[1])
    if len(secret) > 256:
        raise errors.NotAuthenticated("The token is invalid, expired or revoked.")
    with db.scope(write=False) as s:
        token = tokens.authenticate(s, secret, now=utcnow())
        roles = token.role_list
        return RequestContext(user_id=token.user_id, project_id=token.project_id,
                              is_admin="admin" in roles, roles=roles, request_id=request_id)


def noauth_context(request: Request, settings: Settings, url_project: str | None,
                   request_id: str) -> RequestContext:
    """``X-Auth-Token: user:project`` or HTTP Basic; everything else is 401.

    :raises NotAuthenticated:
    """
    token = request.headers.get("X-Auth-Token")
    user = project = None
    if token:
        if ":" in token:
            user, _, project = token.partition(":")
            user, project = user.strip(), project.strip()
            user = user or project
            project = project or user
        else:
            user = project = token.strip()
    else:
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise errors.NotAuthenticated("Malformed Basic credentials.") from None
            user = decoded.partition(":")[0].strip()
            project = url_project or user
    if not user or not project:
        raise errors.NotAuthenticated(_MISSING[0])
    if not _NOAUTH_ID.fullmatch(user) or not _NOAUTH_ID.fullmatch(project):
        raise errors.NotAuthenticated("Malformed credentials: user and project ids are 1-255 "
                                      "printable characters.")
    roles = tuple(r.strip().lower() for r in request.headers.get("X-Roles", "").split(",")
                  if r.strip())
    admins = settings.admin_set
    is_admin = user in admins or project in admins or "admin" in roles
    return RequestContext(user_id=user, project_id=project, is_admin=is_admin,
                          roles=roles or ("member",), request_id=request_id)
