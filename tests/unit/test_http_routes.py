"""The route declarations: the plumbing they make (policy, microversion gates, envelope,
loading, reply) and the OpenAPI document derived from them. No database, no broker."""
from __future__ import annotations

import re

import pytest
from flask import Flask
from flask import g
from flask import request
from marshmallow import Schema
from marshmallow import fields

from orchestrator.context import RequestContext
from orchestrator.http import faults
from orchestrator.http import register_routes
from orchestrator.http import schemas
from orchestrator.http.microversion import negotiate
from orchestrator.http.openapi import build_document
from orchestrator.http.routes import Action
from orchestrator.http.routes import Actions
from orchestrator.http.routes import Body
from orchestrator.http.routes import Listing
from orchestrator.http.routes import Query
from orchestrator.http.routes import Reply
from orchestrator.http.routes import RouteBlueprint


class ThingSchema(schemas.StrictSchema):
    name = fields.String(required=True)
    metadata = fields.Dict()
    later = fields.String()


class Counted(Schema):
    """Counts its instances: the plumbing must build them when a route is declared."""

    made = 0
    name = fields.String()

    def __init__(self, *args, **kwargs):
        type(self).made += 1
        super().__init__(*args, **kwargs)


def things() -> RouteBlueprint:
    """A blueprint declaring one route of each kind."""
    bp = RouteBlueprint("things", __name__)

    @bp.declare("POST", "/things", status=202, reply=Reply(ThingSchema, "thing"),
                body=Body(ThingSchema, "thing", gates={"metadata": "3.43"},
                          ignored_before={"later": "3.50"}))
    def create(body):
        """Create a thing."""
        return body

    @bp.declare("PUT", "/things/<thing_id>", since="3.9", policy="backup:backup-import",
                body=Body(ThingSchema, "thing", null_is_empty=True))
    def update(thing_id, body):
        """Replace a thing (admin)."""

    @bp.declare("POST", "/strict", reply=Reply(Counted, "counted"),
                body=Body(Counted, "counted", strict_from="3.53"))
    def strict(body):
        """Unknown keys refused from 3.53."""
        return body

    @bp.declare("POST", "/record", reply=Reply(ThingSchema, "r"),
                body=Body(ThingSchema, "r", not_object=None))
    def record(body):
        """The schema says what is wrong with a value that is not an object."""
        return body

    @bp.declare("POST", "/things/<thing_id>/action", status=202, body=Actions((
        Action("os-reset", Body(ThingSchema, not_object="os-reset needs a name.")),
        Action("os-poke"))))
    def action(thing_id, action, body):
        """Act on a thing."""
        g.acted = (action, body)

    @bp.declare("GET", "/quota/<target>", policy="volume_extension:quotas:show",
                owner="target", reply=Reply(ThingSchema, "q"),
                query=(Query("usage", "with usage", boolean=True),
                       Query("force", "forcing", boolean=True, since="3.23"),
                       Query("host", "a host")))
    def quota(target, usage, force, host):
        """A project's quota."""
        return {"target": target, "usage": usage, "force": force, "host": host}

    @bp.declare("PUT", "/toggle/<what>", choices={"what": ("on", "off")},
                policy="volume_extension:services:update", body=Body(ThingSchema),
                reply=Reply(ThingSchema))
    def toggle(what, body):
        """Toggle."""
        return {"what": what, **body}

    @bp.declare("GET", "/listed", listing=Listing(filters=("display_name",)),
                reply=Reply(ThingSchema, "items", many=True))
    def listed(page):
        """A list."""
        return [{"limit": page["limit"]}], [], None

    return bp


@pytest.fixture
def client():
    app = Flask("routes-test")
    app.config["ORCH_SETTINGS"] = type("S", (), {"max_list_limit": 1000,
                                                 "public_endpoint": ""})()
    faults.init_app(app)
    app.register_blueprint(things(), url_prefix="/v3")

    @app.before_request
    def _caller():
        g.api_version = negotiate(request.headers.get("OpenStack-API-Version"))
        admin = request.headers.get("X-Admin") == "1"
        g.context = RequestContext(user_id="u", project_id="p1", is_admin=admin,
                                   roles=("member",))

    return app.test_client()


def send(client, method, path, body=None, version="3.71", admin=False, data=None):
    headers = {"OpenStack-API-Version": f"volume {version}"}
    if admin:
        headers["X-Admin"] = "1"
    return client.open(f"/v3{path}", method=method, json=body, data=data, headers=headers)


def fault(r, code: int) -> str:
    assert r.status_code == code, r.data
    (body,) = r.get_json().values()
    assert body["code"] == code
    return body["message"]


def test_a_field_gated_at_343_is_refused_at_342_and_taken_at_343(client):
    body = {"thing": {"name": "n", "metadata": {"k": "v"}}}
    assert fault(send(client, "POST", "/things", body, "3.42"), 400) == \
        "Invalid input received: metadata is not allowed before microversion 3.43."
    r = send(client, "POST", "/things", body, "3.43")
    assert r.status_code == 202 and r.get_json() == {"thing": {"name": "n",
                                                               "metadata": {"k": "v"}}}


def test_a_field_ignored_before_its_version_is_dropped_after_loading(client):
    body = {"thing": {"name": "n", "later": "x"}}
    assert send(client, "POST", "/things", body, "3.49").get_json() == {"thing": {"name": "n"}}
    assert send(client, "POST", "/things", body, "3.50").get_json()["thing"]["later"] == "x"


def test_the_envelope_holds_exactly_one_object(client):
    wrong = "Invalid input received: the body must hold exactly one key, 'thing'."
    assert fault(send(client, "POST", "/things", {"thing": {"name": "n"}, "x": 1}), 400) == wrong
    assert fault(send(client, "POST", "/things", {"other": {}}), 400) == wrong
    assert fault(send(client, "POST", "/things", {"thing": []}), 400) == \
        "Invalid input received: 'thing' must be an object."
    assert fault(send(client, "POST", "/things", {"thing": {"name": 1}}), 400) == \
        "Invalid input received: name: Not a valid string."
    assert fault(send(client, "POST", "/record", {"r": "text"}), 400) == \
        "Invalid input received: Invalid input type."
    assert fault(send(client, "POST", "/things", data="{", version="3.71"), 400) == \
        "Malformed request body"


def test_since_is_a_404_below_and_policy_comes_before_everything(client):
    assert fault(send(client, "PUT", "/things/t1", {"thing": None}, "3.8", admin=True), 404) == \
        "The resource could not be found."
    # A member is refused before the version, the body or its envelope are looked at.
    for version, body in (("3.8", {"thing": {}}), ("3.71", {"junk": 1})):
        assert fault(send(client, "PUT", "/things/t1", body, version), 403) == \
            "Policy doesn't allow backup:backup-import to be performed."
    assert fault(send(client, "PUT", "/things/t1", {"thing": None}, "3.9", admin=True), 400) == \
        "Invalid input received: name: Missing data for required field."
    r = send(client, "PUT", "/things/t1", {"thing": {"name": "n"}}, "3.9", admin=True)
    assert r.status_code == 200 and r.data == b"" and "Content-Type" not in r.headers


def test_unknown_keys_are_refused_from_the_strict_version(client):
    body = {"counted": {"name": "n", "junk": 1}}
    assert send(client, "POST", "/strict", body, "3.52").get_json() == {"counted": {"name": "n"}}
    assert fault(send(client, "POST", "/strict", body, "3.53"), 400) == \
        "Invalid input received: junk: Unknown field."


def test_schemas_are_built_when_the_route_is_declared_not_per_request(client):
    before = Counted.made
    for _ in range(3):
        send(client, "POST", "/strict", {"counted": {"name": "n"}}, "3.53")
    assert Counted.made == before


def test_an_action_body_names_one_declared_action(client):
    assert fault(send(client, "POST", "/things/t/action", {"a": 1, "b": 2}), 400) == \
        "Invalid input received: exactly one action is expected."
    assert fault(send(client, "POST", "/things/t/action", {"os-x": None}), 400) == \
        "There is no such action: os-x"
    assert fault(send(client, "POST", "/things/t/action", {"os-reset": "n"}), 400) == \
        "Invalid input received: os-reset needs a name."
    r = send(client, "POST", "/things/t/action", {"os-poke": {"any": "thing"}})
    assert r.status_code == 202 and r.data == b""


def test_owner_policy_and_declared_query_parameters(client):
    r = send(client, "GET", "/quota/p1?usage=yes&force=1&host=h", version="3.23")
    assert r.get_json() == {"q": {"target": "p1", "usage": True, "force": True, "host": "h"}}
    r = send(client, "GET", "/quota/p1?force=1", version="3.22")
    assert r.get_json()["q"] == {"target": "p1", "usage": False, "force": False, "host": None}
    assert fault(send(client, "GET", "/quota/p2?usage=perhaps"), 403) == \
        "Policy doesn't allow volume_extension:quotas:show to be performed."
    assert fault(send(client, "GET", "/quota/p1?usage=perhaps"), 400) == \
        "Invalid input received: usage must be a boolean, got 'perhaps'."
    assert send(client, "GET", "/quota/p2", admin=True).status_code == 200


def test_path_choices_are_404_after_the_policy_and_before_the_body(client):
    assert fault(send(client, "PUT", "/toggle/sideways", {"name": "x"}), 403).endswith(
        "volume_extension:services:update to be performed.")
    assert fault(send(client, "PUT", "/toggle/sideways", {"junk": 1}, admin=True), 404) == \
        "The resource could not be found."
    r = send(client, "PUT", "/toggle/on", {"name": "x"}, admin=True)
    assert r.get_json() == {"what": "on", "name": "x"}


def test_a_listing_hands_the_page_in_and_wraps_the_rendered_items(client):
    assert send(client, "GET", "/listed?limit=5").get_json() == {"items": [{"limit": 5}]}
    assert fault(send(client, "GET", "/listed?limit=x"), 400) == \
        "Invalid input received: limit param must be an integer"


def test_a_declaration_must_match_its_view():
    bp = RouteBlueprint("bad", __name__)
    with pytest.raises(TypeError, match="takes"):
        @bp.declare("POST", "/x/<x_id>", body=Body(ThingSchema, "x"))
        def wrong(x_id):
            """No body argument."""
    with pytest.raises(ValueError, match="unknown policy rule"):
        @bp.declare("GET", "/y", policy="backup:nonsense")
        def unknown():
            """A rule policy.RULES does not know."""


@pytest.fixture(scope="module")
def document():
    app = Flask("routes-only")
    register_routes(app)
    return app, build_document(app)


def test_the_document_lists_every_declared_route_in_both_url_forms(document):
    app, doc = document
    declared = set()
    for rule in app.url_map.iter_rules():
        route = getattr(app.view_functions[rule.endpoint], "route", None)
        if route is None or (rule.rule.endswith("/") and rule.rule != "/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?(\w+)>", r"{\1}", rule.rule)
        declared.add((route.method.lower(), path))
        assert doc["paths"][path][route.method.lower()]["summary"] == route.summary
    assert len(declared) == sum(len(ops) for ops in doc["paths"].values()) == 78
    assert ("post", "/v3/{project_id}/backups") in declared


@pytest.mark.parametrize("method,path,key,component", [
    ("post", "/v3/backups", "backup", "BackupCreate"),
    ("put", "/v3/backups/{backup_id}", "backup", "BackupUpdate"),
    ("post", "/v3/backups/{backup_id}/restore", "restore", "Restore"),
    ("post", "/v3/backups/import_record", "backup-record", "BackupRecord"),
    ("post", "/v3/volumes", "volume", "VolumeCreate"),
    ("post", "/v3/snapshots", "snapshot", "SnapshotCreate"),
    ("put", "/v3/os-quota-sets/{target}", "quota_set", "QuotaSet"),
])
def test_each_request_body_is_its_schema_in_its_envelope(document, method, path, key,
                                                         component):
    _, doc = document
    schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == [key] and schema["additionalProperties"] is False
    inner = schema["properties"][key]
    refs = [inner.get("$ref")] + [s.get("$ref") for s in inner.get("anyOf", [])]
    assert f"#/components/schemas/{component}" in refs
    assert component in doc["components"]["schemas"]


def test_the_document_says_what_the_declarations_say(document):
    _, doc = document
    paths = doc["paths"]
    create = paths["/v3/backups"]["post"]
    assert "`metadata` from 3.43" in create["description"]
    assert create["x-policy"] == ["backup:create"]
    assert "BackupSummary" in str(create["responses"]["202"])
    update = paths["/v3/backups/{backup_id}"]["put"]
    assert "From 3.9 (404 below)" in update["description"] and "404" in update["responses"]
    toggle = paths["/v3/os-services/{action}"]["put"]
    assert toggle["requestBody"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/ServiceToggle"}
    action = next(p for p in toggle["parameters"] if p["name"] == "action")
    assert action["schema"]["enum"] == ["enable", "disable", "disable-log-reason"]
    listing = {p["name"] for p in paths["/v3/backups/detail"]["get"]["parameters"]}
    assert {"limit", "marker", "with_count", "name", "name~", "status", "volume_id~",
            "metadata"} <= listing
    assert paths["/"]["get"]["security"] == [] and "300" in paths["/"]["get"]["responses"]
    assert "403" not in paths["/v3/backups/{backup_id}"]["get"]["responses"]
    assert "403" in paths["/v3/backups/{backup_id}/export_record"]["get"]["responses"]


def test_patterns_match_whole_values_and_metadata_has_limits():
    """A $-anchored re.match let a trailing newline through; metadata had no item cap."""
    import uuid

    import marshmallow

    from orchestrator.http import microversion
    from orchestrator.http import schemas
    create = schemas.BackupCreateSchema()
    vid = str(uuid.uuid4())
    for bad in ({"k\n": "v"}, {"k": "v" * 256}, {f"k{i}": "v" for i in range(129)}):
        with pytest.raises(marshmallow.ValidationError):
            create.load({"volume_id": vid, "metadata": bad})
    create.load({"volume_id": vid, "metadata": {f"k{i}": "v" * 255 for i in range(128)}})
    assert microversion._VERSION.fullmatch("3.0\n") is None
