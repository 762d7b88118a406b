"""Version discovery: / and /v3 (no credentials needed)."""
from __future__ import annotations

from orchestrator.http import schemas
from orchestrator.http.microversion import MAX_VERSION
from orchestrator.http.microversion import MIN_VERSION
from orchestrator.http.responses import base_url
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint

bp = RouteBlueprint("versions", __name__, project_twin=False)

VERSIONS = Reply(schemas.VersionsSchema)


def _versions() -> dict:
    """The one version document this API serves."""
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


@bp.declare("GET", "/", public=True, status=300, reply=VERSIONS)
def root():
    """Version discovery (no credentials needed)."""
    return _versions()


# Only /v3 itself: /v3/<anything> is a resource URL, and one that names nothing is a 404
# (clients' discovery falls back from a project URL to /v3 and the root).
@bp.declare("GET", "/v3", public=True, reply=VERSIONS, aliases=("/v3/",))
def v3():
    """The v3 version document (no credentials needed)."""
    return _versions()
