"""The Cinder v3 wire layer: app factory, request hooks and blueprints."""
from __future__ import annotations

import logging
import uuid

from flask import Flask
from flask import g
from flask import request
from werkzeug.routing import BaseConverter
from werkzeug.routing import ValidationError

from orchestrator import errors
from orchestrator.config import Settings
from orchestrator.db import get_database
from orchestrator.http import faults
from orchestrator.http import transaction
from orchestrator.http.auth import MODES
from orchestrator.http.auth import authenticate
from orchestrator.http.body import check_request_text
from orchestrator.http.jsonio import FastJSONProvider
from orchestrator.http.microversion import negotiate

log = logging.getLogger(__name__)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# First path segments under /v3[/{project_id}] that can never be a project id.
COLLECTIONS = frozenset({"volumes", "snapshots", "backups", "os-services", "os-quota-sets",
                         "os-availability-zone", "limits", "types", "extensions"})


class ProjectConverter(BaseConverter):
    """A project id in the URL: [A-Za-z0-9_-]{1,64}, never a collection name."""

    regex = r"[A-Za-z0-9_-]{1,64}"

    def to_python(self, value: str) -> str:
        if value in COLLECTIONS:
            raise ValidationError()
        return value


def blueprints() -> list:
    """The API's /v3 blueprints, in the order they are registered."""
    from orchestrator.http import availability_zones
    from orchestrator.http import backups
    from orchestrator.http import limits
    from orchestrator.http import quotas
    from orchestrator.http import services
    from orchestrator.http import snapshots
    from orchestrator.http import volumes
    return [backups.bp, volumes.bp, snapshots.bp, quotas.bp, limits.bp, services.bp,
            availability_zones.bp]


def register_routes(app: Flask) -> None:
    """Register version discovery and every /v3 blueprint on ``app``, the latter in both
    URL forms (``/v3/...`` and ``/v3/<project_id>/...``)."""
    from orchestrator.http import versions
    app.url_map.converters["project"] = ProjectConverter
    app.url_map.strict_slashes = False
    app.register_blueprint(versions.bp)
    for bp in blueprints():
        app.register_blueprint(bp, url_prefix="/v3", name=bp.name)
        app.register_blueprint(bp, url_prefix="/v3/<project:project_id>",
                               name=f"{bp.name}_project")


def create_app(settings: Settings | None = None, *, celery_app=None) -> Flask:
    """Create the API application."""
    from orchestrator.dispatch import Publisher
    from orchestrator.http import openapi
    from orchestrator.tasks import make_celery

    settings = settings or Settings.from_env()
    if settings.auth not in MODES:
        raise ValueError(f"ORCH_AUTH must be one of {', '.join(MODES)}, not {settings.auth!r}")
    app = Flask("orchestrator")
    app.json = FastJSONProvider(app)
    app.config["ORCH_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["orch_db"] = get_database(settings.database_url)
    app.extensions["orch_celery"] = celery_app or make_celery(settings)
    app.extensions["orch_publisher"] = Publisher(app.extensions["orch_celery"])
    faults.init_app(app)
    transaction.init_app(app)
    register_routes(app)
    app.register_blueprint(openapi.bp)

    @app.before_request
    def _begin():
        g.request_id = f"req-{uuid.uuid4()}"
        g.api_version = None
        g.url_project = None
        endpoint = request.endpoint or ""
        if not request.path.startswith("/v3/") or endpoint.startswith("versions."):
            return None
        g.api_version = negotiate(request.headers.get("OpenStack-API-Version"))
        check_request_text()
        url_project = (request.view_args or {}).get("project_id")
        g.url_project = url_project
        g.context = authenticate(request, settings, app.extensions["orch_db"], url_project,
                                 g.request_id)
        if url_project and url_project != g.context.project_id:
            raise errors.InvalidInput("Malformed request url")
        if request.method not in SAFE_METHODS and not g.context.can_write():
            raise errors.PolicyNotAuthorized(message=(
                f"Policy doesn't allow {request.method} {request.path} to be performed: the "
                f"roles of the caller ({', '.join(g.context.roles)}) only allow reading."))
        return None

    @app.after_request
    def _headers(response):
        rid = g.get("request_id") or f"req-{uuid.uuid4()}"
        response.headers["x-openstack-request-id"] = rid
        response.headers["x-compute-request-id"] = rid
        if request.path.startswith("/v3/") and not (request.endpoint or "").startswith(
                "versions."):
            version = g.get("api_version")
            response.headers["OpenStack-API-Version"] = f"volume {version or '3.0'}"
            response.headers["Vary"] = "OpenStack-API-Version"
        return response

    return app
