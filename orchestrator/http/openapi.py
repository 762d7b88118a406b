"""The OpenAPI 3 description of the API, made by apispec from the route declarations.

``GET /openapi.json`` serves it without credentials. Each operation comes
from a rule of the application's URL map (both URL forms, ``/v3/...`` and
``/v3/{project_id}/...``) and the ``Route`` its view was declared with
(routes.py): summary and description, the request body in its envelope, query
parameters, the reply in its envelope, policy and microversion notes, and the
faults it may answer. apispec's marshmallow plugin turns the schemas of
schemas.py into components.
"""
from __future__ import annotations

import re

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import jsonify
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from orchestrator import policy
from orchestrator.http import query
from orchestrator.http import schemas
from orchestrator.http.microversion import MAX_VERSION
from orchestrator.http.microversion import MIN_VERSION
from orchestrator.http.routes import Actions
from orchestrator.http.routes import Body
from orchestrator.http.routes import Listing
from orchestrator.http.routes import Route

bp = Blueprint("openapi", __name__)

VERSION = f"{MAX_VERSION[0]}.{MAX_VERSION[1]}"
AFTER_LOOKUP = "After the lookup (403 on a visible resource, 404 on another project's)"
FAULT_TEXT = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
              405: "badMethod", 406: "computeFault (microversion outside 3.0-3.71)",
              413: "overLimit (quota, or a body over the size limit)",
              415: "badMediaType", 503: "serviceUnavailable"}
VERSION_HEADER = {
    "name": "OpenStack-API-Version", "in": "header", "required": False,
    "description": f"`volume {MIN_VERSION[0]}.{MIN_VERSION[1]}` .. `volume {VERSION}` or "
                   "`volume latest`; absent means 3.0. Malformed: 400; out of range: 406.",
    "schema": {"type": "string", "example": f"volume {VERSION}"}}
BOOLEAN = {"type": "string", "enum": ["true", "false", "1", "0"]}
_RULE_ARG = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


def _schema_name(schema) -> str:
    """Component names: the class's qualified name without "Schema" (``Fault._Fault``)."""
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__qualname__.replace("Schema", "") or cls.__qualname__


def _field_extras(self, field: fields.Field, ret: dict, **kwargs) -> dict:
    """What apispec cannot infer from this project's own fields (an apispec attribute
    function, called with the converter as ``self`` and the property so far as ``ret``)."""
    if isinstance(field, schemas.LenientBool):
        return {"oneOf": [{"type": "boolean"},
                          {"type": "string", "enum": sorted(schemas.TRUE | schemas.FALSE),
                           "description": "any case"}]}
    if isinstance(field, schemas.WholeNumber):
        ret.pop("x-minimum", None)  # apispec's range outside a type: it goes on the integer
        ret.pop("x-maximum", None)
        number = {"type": "integer"}
        for v in field.validators:
            if isinstance(v, validate.Range):
                number.update({k: x for k, x in (("minimum", v.min), ("maximum", v.max))
                               if x is not None})
        return {"oneOf": [number, {"type": "string", "pattern": "^-?[0-9]+$"}]}
    if isinstance(field, fields.Dict) and field.key_field is not None:
        for v in field.key_field.validators:
            if isinstance(v, validate.Regexp):
                return {"x-key-pattern": f"^{v.regex.pattern}$"}
    return {}


def build_document(app: Flask) -> dict:
    """The whole OpenAPI document for ``app``'s declared routes."""
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    spec = APISpec(
        title="Volume backup orchestrator: Cinder Block Storage API v3 subset",
        version=VERSION, openapi_version="3.0.3", plugins=[plugin],
        info={"description": "Cinder v3 compatible. Every /v3 route exists with and without "
                             "the /{project_id} segment; a project segment other than the "
                             "caller's is a 400. Faults are "
                             "{\"<faultName>\": {\"code\": N, \"message\": \"...\"}}."},
        servers=[{"url": "/"}], security=[{"token": []}])
    plugin.map_to_openapi_type(schemas.UUIDString, "string", "uuid")
    plugin.converter.add_attribute_function(_field_extras)
    spec.components.security_scheme("token", {
        "type": "apiKey", "in": "header", "name": "X-Auth-Token",
        "description": "ORCH_AUTH=token: a secret from `orchestrator token create`; "
                       "ORCH_AUTH=noauth: `user_id:project_id`; "
                       "ORCH_AUTH=keystone: a Keystone token."})
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, sorted(r.methods))):
        view = app.view_functions[rule.endpoint]
        route: Route | None = getattr(view, "route", None)
        path = _RULE_ARG.sub(r"{\1}", rule.rule)
        if route is None or (path != "/" and path.endswith("/")):
            continue  # not declared (this document), or the trailing-slash twin of a path
        tag = app.blueprints[rule.endpoint.partition(".")[0]].tag
        spec.path(path=path, operations={route.method.lower(): _operation(route, path, tag)})
    doc = spec.to_dict()
    _describe_components(doc["components"]["schemas"])
    return doc


def _describe_components(components: dict) -> None:
    """Each component's description from its schema's docstring."""
    for cls in _schema_classes():
        name = _schema_name(cls)
        if name in components and cls.__doc__ and "description" not in components[name]:
            components[name]["description"] = " ".join(cls.__doc__.split())


def _schema_classes():
    """Every schema class of schemas.py, nested ones included."""
    pending = [v for v in vars(schemas).values() if isinstance(v, type) and issubclass(v, Schema)]
    while pending:
        cls = pending.pop()
        yield cls
        pending += [v for v in vars(cls).values() if isinstance(v, type) and
                    issubclass(v, Schema) and v.__qualname__.startswith(cls.__qualname__ + ".")]


def _operation(route: Route, path: str, tag: str) -> dict:
    """One operation object; schema classes are left for apispec to resolve."""
    op: dict = {"operationId": _operation_id(route.method, path), "summary": route.summary,
                "tags": [tag]}
    params: list = []
    for name in _RULE_ARG.findall(path.replace("{", "<").replace("}", ">")):
        schema: dict = {"type": "string"}
        if name in route.choices:
            schema["enum"] = list(route.choices[name])
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    params += [_query(q.name, q.description, {"type": "string", "enum": list(q.enum)}
                      if q.enum else None) for q in route.query]
    if route.listing is not None:
        params += _listing(route.listing)
    if route.public:
        op["security"] = []
    else:
        params.append(VERSION_HEADER)
    if params:
        op["parameters"] = params
    description = _notes(route)
    if description:
        op["description"] = description
    if route.policies():
        op["x-policy"] = route.policies()
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _request_schema(route.body)}}}
    op["responses"] = {str(route.status): _reply(route), **_faults(route)}
    return op


def _query(name: str, description: str, schema: dict | None = None) -> dict:
    """An optional query parameter (a string unless ``schema`` says otherwise)."""
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _listing(listing: Listing) -> list[dict]:
    """Paging, sorting, scoping and the filters of a list."""
    out = [
        _query("limit", "Page size (>= 0; larger than the server maximum is clamped).",
               {"type": "integer", "minimum": 0}),
        _query("marker", "Id of the last item of the previous page (unknown id: 404)."),
        _query("offset", f"Items to skip (0 .. {schemas.DB_MAX_INT}).",
               {"type": "integer", "minimum": 0, "maximum": schemas.DB_MAX_INT}),
        _query("sort", "key[:asc|desc][,key2[:dir]] (default direction desc)." +
               (f" `name` from {listing.name_sort_since}." if listing.name_sort_since else "")),
        _query("sort_key", "Legacy sort key(s), comma-separated (not with `sort`)."),
        _query("sort_dir", "Legacy sort direction(s): asc or desc (not with `sort`)."),
        _query("with_count", f"{query.WITH_COUNT_SINCE}+: add the total `count` of matching "
                             "items.", BOOLEAN),
        _query("all_tenants", "Admins: list every project. Ignored for other callers.",
               BOOLEAN),
    ]
    for column in listing.filters:
        name = "name" if column == listing.name_column else column
        if column == "metadata":
            out.append(_query(name, "Items whose metadata holds these pairs, as JSON "
                                    "(`{\"k\": \"v\"}`)."))
            continue
        out.append(_query(name, f"Exact match on {name}."))
        out.append(_query(f"{name}~", f"{query.LIKE_SINCE}+: substring match on {name}."))
    for column in listing.admin_filters:
        out.append(_query(column, "Admins: items whose metadata holds these pairs, as JSON "
                                  "(`{\"k\": \"v\"}`)." if column == "metadata"
                          else f"Admins: exact match on {column}."))
    return out


def _notes(route: Route) -> str:
    """The description: the docstring's text, then what the declaration says."""
    notes = [route.description] if route.description else []
    if route.since:
        notes.append(f"From {route.since} (404 below).")
    body = route.body
    if isinstance(body, Body):
        if body.gates:
            notes.append(", ".join(f"`{name}` from {v}" for name, v in body.gates.items()) +
                         " (refused below).")
        if body.ignored_before:
            notes.append(", ".join(f"`{name}` from {v}"
                                   for name, v in body.ignored_before.items()) +
                         " (ignored below).")
        if body.strict_from:
            notes.append(f"Unknown keys are ignored below {body.strict_from} and refused "
                         "from it.")
    for q in route.query:
        if q.since:
            notes.append(f"`{q.name}` from {q.since} (ignored below).")
    if route.policy and route.owner:
        notes.append(f"The caller's own project, or any project with `{route.policy}` "
                     f"({policy.RULES[route.policy]}).")
    elif route.policy and policy.RULES[route.policy] is policy.Role.ADMIN:
        notes.append(f"Admin only (`{route.policy}`).")
    after = [(None, route.resource_policy)] + [(f"`{q.name}`", q.policy) for q in route.query]
    if isinstance(body, Actions):
        after += [(f"`{a.name}`", a.policy) for a in body.actions]
    after = [(what, rule) for what, rule in after if rule]
    if after:
        notes.append(f"{AFTER_LOOKUP}: " + ", ".join(
            f"{what + ' ' if what else ''}needs `{rule}` ({policy.RULES[rule]})"
            for what, rule in after) + ".")
    return " ".join(notes)


def _request_schema(body: Body | Actions) -> dict:
    """The request body's JSON Schema, around the declared schema classes."""
    if isinstance(body, Actions):
        return {"oneOf": [_envelope(a.name, a.body.schema if a.body else
                                    {"description": a.description, "nullable": True})
                          for a in body.actions]}
    if body.envelope is None:
        return body.schema
    inner = body.schema
    if body.null_is_empty:
        inner = {"anyOf": [inner, {"type": "object", "nullable": True}], "nullable": True}
    out = _envelope(body.envelope, inner)
    for sibling in body.siblings:
        out["properties"][sibling] = {"type": "object"}
    return out


def _envelope(key: str, inner) -> dict:
    """An object holding exactly ``key``."""
    return {"type": "object", "required": [key], "additionalProperties": False,
            "properties": {key: inner}}


def _reply(route: Route) -> dict:
    """The success response: the reply schema in its envelope (a page for lists)."""
    reply = route.reply
    if reply is None:
        return {"description": "No body."}
    inner = {"type": "array", "items": reply.schema} if reply.many else reply.schema
    schema = inner
    if reply.envelope is not None:
        schema = {"type": "object", "required": [reply.envelope],
                  "properties": {reply.envelope: inner}}
        if route.listing is not None:
            schema["properties"][f"{reply.envelope}_links"] = {
                "type": "array", "items": schemas.LinkSchema,
                "description": "the next page, when there may be one"}
            schema["properties"]["count"] = {
                "type": "integer",
                "description": f"{query.WITH_COUNT_SINCE}+ with with_count=true"}
    return {"description": "OK", "content": {"application/json": {"schema": schema}}}


def _faults(route: Route) -> dict:
    """The faults an operation may answer: the declared ones and what the layer adds."""
    codes = set(route.errors)
    if not route.public:
        codes |= {400, 401, 406}
        if route.method in ("POST", "PUT"):
            codes |= {413, 415}
        if route.method != "GET" or any(policy.RULES[rule] is not policy.Role.READER
                                        for rule in route.policies()):
            codes.add(403)
        if route.since or route.choices:
            codes.add(404)
    return {str(code): {"description": FAULT_TEXT.get(code, "fault"),
                        "content": {"application/json": {"schema": schemas.FaultSchema}}}
            for code in sorted(codes)}


def _operation_id(method: str, path: str) -> str:
    """``post_v3_project_id_backups``: the method and the path's words."""
    words = [w.strip("{}").replace("-", "_").replace("~", "") for w in path.split("/") if w]
    return method.lower() + "_" + "_".join(words or ["root"])


@bp.get("/openapi.json")
def document():
    """This API's OpenAPI 3 document (no credentials needed)."""
    doc = current_app.extensions.get("orch_openapi")
    if doc is None:
        doc = current_app.extensions["orch_openapi"] = build_document(current_app)
    return jsonify(doc)
