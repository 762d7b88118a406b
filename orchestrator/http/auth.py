"""Credentials → RequestContext, in one of three modes chosen by ``ORCH_AUTH``.

* ``noauth`` (development, contract §4.2): ``X-Auth-Token: user:project`` or
  HTTP Basic; admin iff the user or project is in ``ORCH_ADMIN_NAMES`` (or
  ``X-Roles`` names admin).
* ``token`` (production): ``X-Auth-Token: <secret>`` issued by
  ``orchestrator token create``; user, project and roles come from the
  stored token, never from request headers.
* ``keystone`` (an OpenStack cloud): keystonemiddleware's ``auth_token`` in
  front of the app validates the Keystone token and sets X-User-Id,
  X-Project-Id, X-Roles, ... (having removed any the caller sent); the
  context is read from those, as Cinder's keystone context does.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import re

from flask import Request

from orchestrator import errors
from orchestrator import policy
from orchestrator import tokens
from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import Database
from orchestrator.db import utcnow

MODES = ("noauth", "token", "keystone")
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
    if settings.auth == "keystone":
        return keystone_context(request, request_id)
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


def _header_list(request: Request, name: str) -> tuple[str, ...]:
    return tuple(r.strip().lower() for r in request.headers.get(name, "").split(",")
                 if r.strip())


def keystone_context(request: Request, request_id: str) -> RequestContext:
    """The context auth_token's headers describe (it strips any a caller sends).

    :raises NotAuthenticated: no token, or one Keystone did not confirm.
    :raises PolicyNotAuthorized: a token scoped to a domain or the system, not a project.
    """
    h = request.headers
    if h.get("X-Identity-Status") != "Confirmed" or not h.get("X-User-Id"):
        raise errors.NotAuthenticated("The request you have made requires authentication: "
                                      "send a valid Keystone token in X-Auth-Token.")
    ctx = RequestContext(
        user_id=h["X-User-Id"], project_id=h.get("X-Project-Id", ""),
        roles=_header_list(request, "X-Roles"), request_id=request_id, keystone=True,
        user_domain_id=h.get("X-User-Domain-Id"), project_domain_id=h.get("X-Project-Domain-Id"),
        domain_id=h.get("X-Domain-Id"), system_scope=h.get("OpenStack-System-Scope"),
        is_admin_project=h.get("X-Is-Admin-Project", "True").lower() == "true",
        service_roles=(_header_list(request, "X-Service-Roles")
                       if h.get("X-Service-Identity-Status") == "Confirmed" else ()),
        service_user_id=h.get("X-Service-User-Id"),
        service_project_id=h.get("X-Service-Project-Id"))
    # Cinder's is_admin: whatever the context_is_admin rule (role:admin) says.
    ctx = dataclasses.replace(ctx, is_admin=policy.check("context_is_admin",
                                                         policy.credentials(ctx)))
    if not ctx.project_id:
        scope = f"system {ctx.system_scope}" if ctx.system_scope else f"domain {ctx.domain_id}"
        raise errors.PolicyNotAuthorized(message=(
            f"This service needs a project-scoped token; this one is scoped to the {scope}."))
    return ctx


def keystone_middleware(wsgi_app, settings: Settings):
    """``wsgi_app`` behind keystonemiddleware's auth_token, configured from ORCH_KEYSTONE_*.

    The decision is delayed to ``keystone_context`` so that version discovery (``/``,
    ``/v3``) stays open and every refusal is a Cinder-style fault.
    """
    from keystoneauth1 import loading
    from keystonemiddleware import auth_token
    from keystonemiddleware import opts as ksm_opts
    from oslo_config import cfg

    # A private oslo.config object (never the global one), so that no option is read from
    # a file or the command line: every value comes from Settings.
    group = "keystone_authtoken"
    conf = cfg.ConfigOpts()
    conf([], project="orchestrator", default_config_files=[], default_config_dirs=[])
    for name, opts in ksm_opts.list_auth_token_opts():
        conf.register_opts(opts, group=name)
    loading.register_auth_conf_options(conf, group)
    conf.register_opts(loading.get_auth_plugin_conf_options("password"), group=group)
    values = {
        "auth_type": "password",
        "auth_url": settings.keystone_auth_url,
        "www_authenticate_uri": settings.keystone_auth_url,
        "username": settings.keystone_username,
        "password": settings.keystone_password,
        "project_name": settings.keystone_project_name,
        "user_domain_name": settings.keystone_user_domain_name,
        "project_domain_name": settings.keystone_project_domain_name,
        "interface": settings.keystone_interface,
        "delay_auth_decision": True,
        "token_cache_time": settings.keystone_token_cache_time,
        "region_name": settings.keystone_region_name or None,
        "memcached_servers": [s.strip() for s in settings.keystone_memcached_servers.split(",")
                              if s.strip()] or None,
    }
    for name, value in values.items():
        conf.set_override(name, value, group=group)
    return auth_token.AuthProtocol(wsgi_app, {"oslo_config_config": conf})
