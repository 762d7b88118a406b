"""Version discovery: / and /v3 (no credentials needed)."""
from __future__ import annotations

from flask import Blueprint
from flask import jsonify

from orchestrator.http.microversion import MAX_VERSION
from orchestrator.http.microversion import MIN_VERSION
from orchestrator.http.responses import base_url

bp = Blueprint("versions", __name__)


def _versions() -> dict:
    return {"versions": [{
        "id": "v3.0", "status": "CURRENT",
        "version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
        "min_version": f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
        "updated": "2023-08-31T00:00:00Z",
        "links": [{"rel": "describedby", "type": "text/html",
                   "href": "https://docs.openstack.org/"},
                  {"rel": "self", "href": f"{base_url()}/v3/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.volume+json;version=3"}],
    }]}


@bp.get("/")
def root():
    """Version discovery (no credentials needed)."""
    return jsonify(_versions()), 300


@bp.get("/v3")
@bp.get("/v3/")
@bp.get("/v3/<project:project_id>")
@bp.get("/v3/<project:project_id>/")
def v3(project_id=None):
    """The v3 version document (no credentials needed)."""
    return jsonify(_versions())
