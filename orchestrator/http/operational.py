"""What operators and their tools call: ``/metrics``, ``/healthcheck``, the access log.

Neither endpoint needs credentials, and neither shows a project's data:
``/metrics`` has no project, volume or backup labels, and ``/healthcheck``
answers anyone with the status alone (``OK``, or 503 ``Service Unavailable``,
as oslo.middleware's healthcheck does); an admin's token gets the detail of
each check as JSON.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint
from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import jsonify
from flask import request

from orchestrator import errors
from orchestrator import health
from orchestrator import metrics
from orchestrator.http.auth import authenticate

bp = Blueprint("operational", __name__)
access_log = logging.getLogger("orchestrator.access")
log = logging.getLogger(__name__)


@bp.get("/metrics")
def scrape():
    """Prometheus exposition: this API's request metrics and the state gauges."""
    ext = current_app.extensions
    body, content_type = metrics.render([ext["orch_state_collector"]])
    return Response(body, content_type=content_type)


@bp.route("/healthcheck", methods=["GET", "HEAD"])
def healthcheck():
    """200 when the database and the broker answer, else 503; the detail for admins."""
    ext = current_app.extensions
    settings = current_app.config["ORCH_SETTINGS"]
    result = health.run_checks(health.service_checks(settings, ext["orch_db"],
                                                     ext["orch_celery"]),
                               settings.health_timeout)
    status = 200 if result["ok"] else 503
    if _is_admin(settings):
        return jsonify({"status": "OK" if result["ok"] else "FAILED", **result}), status
    return Response("OK\n" if result["ok"] else "Service Unavailable\n", status=status,
                    content_type="text/plain; charset=utf-8")


def _is_admin(settings) -> bool:
    """Whether the request carries an admin's credentials (anything else: anonymous)."""
    if not (request.headers.get("X-Auth-Token") or request.headers.get("Authorization")):
        return False
    try:
        context = authenticate(request, settings, current_app.extensions["orch_db"], None,
                               g.request_id)
    except errors.OrchestratorError:
        return False
    except Exception:  # the token store is the database, which may be what is down
        log.warning("healthcheck: could not check the caller's credentials", exc_info=True)
        return False
    return context.is_admin


def init_app(app: Flask) -> None:
    """Serve the endpoints and time, count and log every request."""
    settings = app.config["ORCH_SETTINGS"]
    app.extensions["orch_state_collector"] = metrics.StateCollector(
        settings, app.extensions["orch_db"], app.extensions["orch_celery"])
    app.register_blueprint(bp)
    log_access = settings.log_format == "json"  # text: granian writes its own access line

    @app.before_request
    def _start_clock():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        started = g.get("started")
        if started is None:
            return response
        seconds = time.perf_counter() - started
        rule = request.url_rule
        route = rule.rule if rule is not None else metrics.UNMATCHED_ROUTE
        metrics.observe_request(route, request.method, response.status_code, seconds)
        if log_access:
            access_log.info("%s %s %d %.1fms", request.method, request.path,
                            response.status_code, seconds * 1000.0,
                            extra={"method": request.method, "path": request.path,
                                   "route": route, "status": response.status_code,
                                   "duration_ms": round(seconds * 1000.0, 3)})
        return response
