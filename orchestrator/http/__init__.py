"""The Cinder v3 wire layer: app factory, request hooks and the route blueprints."""
from __future__ import annotations

import logging

from flask import Flask
from flask import g
from flask import request

from orchestrator import errors
from orchestrator import logs
from orchestrator import policy
from orchestrator.config import Settings
from orchestrator.db import get_database
from orchestrator.dispatch import Publisher
from orchestrator.http import availability_zones
from orchestrator.http import backup_policies
from orchestrator.http import backups
from orchestrator.http import faults
from orchestrator.http import limits
from orchestrator.http import openapi
from orchestrator.http import operational
from orchestrator.http import quotas
from orchestrator.http import services
from orchestrator.http import snapshots
from orchestrator.http import storage
from orchestrator.http import transaction
from orchestrator.http import versions
from orchestrator.http import volumes
from orchestrator.http.auth import MODES
from orchestrator.http.auth import authenticate
from orchestrator.http.auth import keystone_middleware
from orchestrator.http.body import check_request_text
from orchestrator.http.jsonio import FastJSONProvider
from orchestrator.http.microversion import negotiate
from orchestrator.http.routes import ProjectConverter
from orchestrator.tasks import make_celery

log = logging.getLogger(__name__)


def blueprints() -> list:
    """Every route blueprint of the API, in the order they are registered."""
    return [versions.bp, backups.bp, volumes.bp, snapshots.bp, quotas.bp, limits.bp,
            services.bp, availability_zones.bp, storage.bp, backup_policies.bp]


def register_routes(app: Flask) -> frozenset[str]:
    """Register every declared route on ``app``, the /v3 ones in both URL forms
    (``/v3/...`` and ``/v3/<project_id>/...``); returns the public endpoints."""
    app.url_map.converters["project"] = ProjectConverter
    app.url_map.strict_slashes = False
    public = set()
    for bp in blueprints():
        if not bp.project_twin:
            app.register_blueprint(bp)
        else:
            app.register_blueprint(bp, url_prefix="/v3", name=bp.name)
            app.register_blueprint(bp, url_prefix="/v3/<project:project_id>",
                                   name=f"{bp.name}_project")
    for endpoint, view in app.view_functions.items():
        route = getattr(view, "route", None)
        if route is not None and route.public:
            public.add(endpoint)
    return frozenset(public)


def create_app(settings: Settings | None = None, *, celery_app=None) -> Flask:
    """Create the API application."""
    settings = settings or Settings.from_env()
    if settings.auth not in MODES:
        raise ValueError(f"ORCH_AUTH must be one of {', '.join(MODES)}, not {settings.auth!r}")
    policy.configure(settings.policy_file)
    app = Flask("orchestrator")
    app.json = FastJSONProvider(app)
    app.config["ORCH_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["orch_db"] = get_database(settings.database_url)
    app.extensions["orch_celery"] = celery_app or make_celery(settings)
    app.extensions["orch_publisher"] = Publisher(app.extensions["orch_celery"])
    faults.init_app(app)
    transaction.init_app(app)
    public = register_routes(app)
    app.register_blueprint(openapi.bp)
    operational.init_app(app)

    def versioned() -> bool:
        """Whether this request is a /v3 API call (not version discovery)."""
        return request.path.startswith("/v3/") and request.endpoint not in public

    @app.before_request
    def _begin():
        # The caller's id when it is one (req-<uuid>); anything else is replaced, never
        # echoed. Bound for the request: its log lines and the jobs it creates carry it.
        g.request_id = (logs.valid_request_id(request.headers.get("X-OpenStack-Request-ID"))
                        or logs.new_request_id())
        logs.REQUEST_ID.set(g.request_id)
        g.api_version = None
        g.url_project = None
        if not versioned():
            return None
        g.api_version = negotiate(request.headers.get("OpenStack-API-Version"))
        check_request_text()
        url_project = (request.view_args or {}).get("project_id")
        g.url_project = url_project
        g.context = authenticate(request, settings, app.extensions["orch_db"], url_project,
                                 g.request_id)
        if url_project and url_project != g.context.project_id:
            raise errors.InvalidInput("Malformed request url")
        route = getattr(app.view_functions.get(request.endpoint), "route", None)
        policy.authorize_method(g.context, request.method, request.path,
                                rule=route.policy if route is not None else None)
        return None

    @app.after_request
    def _headers(response):
        rid = g.get("request_id") or logs.new_request_id()
        response.headers["x-openstack-request-id"] = rid
        response.headers["x-compute-request-id"] = rid
        if versioned():
            version = g.get("api_version")
            response.headers["OpenStack-API-Version"] = f"volume {version or '3.0'}"
            response.headers["Vary"] = "OpenStack-API-Version"
        return response

    if settings.auth == "keystone":
        app.wsgi_app = keystone_middleware(app.wsgi_app, settings)
    @app.teardown_request
    def _unbind(exc):
        logs.REQUEST_ID.set(None)

    return app
