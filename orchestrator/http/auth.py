"""Credentials → RequestContext (noauth mode: contract §4.2)."""
from __future__ import annotations

import base64
import binascii

from flask import Request

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.context import RequestContext


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
        raise errors.NotAuthenticated("Authentication required: send X-Auth-Token "
                                      "'<user_id>:<project_id>'.")
    roles = tuple(r.strip().lower() for r in request.headers.get("X-Roles", "").split(",")
                  if r.strip())
    admins = settings.admin_set
    is_admin = user in admins or project in admins or "admin" in roles
    return RequestContext(user_id=user, project_id=project, is_admin=is_admin,
                          roles=roles or ("member",), request_id=request_id)
