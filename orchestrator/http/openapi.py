"""The OpenAPI 3 description of the API, built from the routes and the marshmallow schemas.

``GET /openapi.json`` serves it without credentials. Paths come from the
application's URL map (both URL forms, ``/v3/...`` and ``/v3/{project_id}/...``),
summaries from the view docstrings, request and reply bodies from the schemas
in ``schemas.py`` (converted here to JSON Schema), and the per-operation
extras (query parameters, statuses, microversion and policy notes) from
``OPERATIONS`` below.
"""
from __future__ import annotations

import re

from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import jsonify
from marshmallow import RAISE
from marshmallow import Schema
from marshmallow import fields
from marshmallow import validate

from orchestrator.http import schemas
from orchestrator.http.microversion import MAX_VERSION
from orchestrator.http.microversion import MIN_VERSION

bp = Blueprint("openapi", __name__)


def _ref_name(name: str) -> str:
    return f"#/components/schemas/{name}"


def _schema_name(schema: type[Schema]) -> str:
    return schema.__qualname__.replace("Schema", "") or schema.__qualname__


def _ref(schema: type[Schema]) -> str:
    return _ref_name(_schema_name(schema))


ADMIN = "Admin only (403 for a non-admin caller on a visible resource, 404 on another " \
        "project's)."


def _q(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


PAGING = [
    _q("limit", "Page size (>= 0; larger than the server maximum is clamped).",
       {"type": "integer", "minimum": 0}),
    _q("marker", "Id of the last item of the previous page (unknown id: 404)."),
    _q("offset", "Items to skip (0 .. 2147483647).", {"type": "integer", "minimum": 0}),
    _q("sort", "key[:asc|desc][,key2[:dir]] (default direction desc)."),
    _q("sort_key", "Legacy sort key(s), comma-separated (not with `sort`)."),
    _q("sort_dir", "Legacy sort direction(s): asc or desc (not with `sort`)."),
    _q("with_count", "3.45+: add the total `count` of matching items.",
       {"type": "string", "enum": ["true", "false", "1", "0"]}),
    _q("all_tenants", "Admins: list every project. Ignored for other callers.",
       {"type": "string", "enum": ["true", "false", "1", "0"]}),
]


def _filters(*names: str) -> list[dict]:
    out = []
    for name in names:
        out.append(_q(name, f"Exact match on {name}."))
        if name in ("name", "status", "volume_id"):
            out.append(_q(f"{name}~", f"3.34+: substring match on {name}."))
    return out


BACKUP_LIST = PAGING + _filters("name", "status", "volume_id") + [
    _q("metadata", "Admins: backups whose metadata holds these pairs, as JSON "
                   "(`{\"k\": \"v\"}`).")]
VOLUME_LIST = PAGING + _filters("name", "status", "availability_zone", "size", "bootable",
                                "metadata")
SNAPSHOT_LIST = PAGING + _filters("name", "status", "volume_id")


def _wrap(key: str, schema: type[Schema] | dict, *, nullable: bool = False) -> dict:
    inner = schema if isinstance(schema, dict) else {"$ref": _ref(schema)}
    if nullable:
        inner = {"anyOf": [inner, {"type": "object", "nullable": True}], "nullable": True}
    return {"type": "object", "required": [key], "additionalProperties": False,
            "properties": {key: inner}}


ACTION_BODY = {"oneOf": [
    _wrap("os-reset_status", schemas.ResetStatusSchema),
    {"type": "object", "required": ["os-force_delete"], "additionalProperties": False,
     "properties": {"os-force_delete": {"description": "any value (clients send null)",
                                        "nullable": True}}},
    {"type": "object", "required": ["os-verify"], "additionalProperties": False,
     "properties": {"os-verify": {"description": "extension: re-read the backup and check "
                                                "every digest; any value", "nullable": True}}},
]}

VOLUME_CREATE_BODY = {"type": "object", "required": ["volume"], "additionalProperties": False,
                      "properties": {"volume": {"$ref": _ref(schemas.VolumeCreateSchema)},
                                     "OS-SCH-HNT:scheduler_hints": {"type": "object"}}}

# Blueprints whose operations are tagged by their last path segment.
MISC = ("quotas", "limits", "services", "availability_zones")
# endpoint (without the blueprint's "_project" suffix) → extras
OPERATIONS: dict[str, dict] = {
    "versions.root": {"auth": False, "responses": {300: schemas.VersionsSchema},
                      "tags": ["versions"]},
    "versions.v3": {"auth": False, "responses": {200: schemas.VersionsSchema},
                    "tags": ["versions"]},
    "backups.create": {"body": _wrap("backup", schemas.BackupCreateSchema),
                       "responses": {202: schemas.BackupReplySchema},
                       "errors": [400, 404, 413, 503],
                       "notes": "`metadata` from 3.43, `availability_zone` from 3.51."},
    "backups.index": {"query": BACKUP_LIST, "responses": {200: schemas.BackupListSchema}},
    "backups.detail": {"query": BACKUP_LIST, "responses": {200: schemas.BackupListSchema}},
    "backups.show": {"responses": {200: schemas.BackupReplySchema}, "errors": [404]},
    "backups.update": {"body": _wrap("backup", schemas.BackupUpdateSchema),
                       "responses": {200: schemas.BackupReplySchema}, "errors": [400, 404],
                       "notes": "3.9+ (404 below); `metadata` from 3.43 replaces the set."},
    "backups.delete": {"responses": {202: None}, "errors": [400, 404]},
    "backups.restore": {"body": _wrap("restore", schemas.RestoreSchema, nullable=True),
                        "responses": {202: schemas.RestoreReplySchema},
                        "errors": [400, 404, 413]},
    "backups.export_record": {"responses": {200: schemas.BackupRecordReplySchema},
                              "errors": [400, 403, 404], "notes": ADMIN},
    "backups.import_record": {"body": _wrap("backup-record", schemas.BackupRecordSchema),
                              "responses": {201: schemas.BackupReplySchema},
                              "errors": [400, 403, 413, 503], "notes": ADMIN},
    "backups.action": {"body": ACTION_BODY, "responses": {202: None},
                       "errors": [400, 403, 404], "notes": ADMIN},
    "volumes.create_volume": {"body": VOLUME_CREATE_BODY,
                              "responses": {202: schemas.VolumeReplySchema},
                              "errors": [400, 404, 413, 503],
                              "notes": "Unknown keys are refused from 3.53; `backup_id` from "
                                       "3.47."},
    "volumes.list_volumes": {"query": VOLUME_LIST, "responses": {200: schemas.VolumeListSchema}},
    "volumes.list_volumes_detail": {"query": VOLUME_LIST,
                                    "responses": {200: schemas.VolumeListSchema}},
    "volumes.show_volume": {"responses": {200: schemas.VolumeReplySchema}, "errors": [404]},
    "volumes.delete_volume": {
        "query": [_q("cascade", "Delete the volume's snapshots too.",
                     {"type": "string", "enum": ["true", "false"]}),
                  _q("force", "3.23+, admin: any status.",
                     {"type": "string", "enum": ["true", "false"]})],
        "responses": {202: None}, "errors": [400, 403, 404]},
    "snapshots.create_snapshot": {"tags": ["volumes"],
                                  "body": _wrap("snapshot", schemas.SnapshotCreateSchema),
                                  "responses": {202: schemas.SnapshotReplySchema},
                                  "errors": [400, 404, 413]},
    "snapshots.list_snapshots": {"tags": ["volumes"], "query": SNAPSHOT_LIST,
                                 "responses": {200: schemas.SnapshotListSchema}},
    "snapshots.list_snapshots_detail": {"tags": ["volumes"], "query": SNAPSHOT_LIST,
                                        "responses": {200: schemas.SnapshotListSchema}},
    "snapshots.show_snapshot": {"tags": ["volumes"],
                                "responses": {200: schemas.SnapshotReplySchema},
                                "errors": [404]},
    "snapshots.delete_snapshot": {"tags": ["volumes"], "responses": {202: None},
                                  "errors": [400, 404]},
    "quotas.quota_show": {"query": [_q("usage", "Show in_use and reserved too.",
                                       {"type": "string", "enum": ["True", "False"]})],
                          "responses": {200: schemas.QuotaSetReplySchema}, "errors": [403],
                          "notes": "The caller's own project, or any project for admins."},
    "quotas.quota_defaults": {"responses": {200: schemas.QuotaSetReplySchema},
                              "errors": [403]},
    "quotas.quota_update": {"body": _wrap("quota_set", schemas.QuotaSetSchema),
                            "responses": {200: schemas.QuotaSetReplySchema},
                            "errors": [400, 403], "notes": "Admin only."},
    "quotas.quota_delete": {"responses": {200: None}, "errors": [403], "notes": "Admin only."},
    "limits.limits": {"responses": {200: schemas.LimitsReplySchema}},
    "services.services": {"query": [_q("host", "Only this host."),
                                    _q("binary", "Only this binary.")],
                          "responses": {200: schemas.ServiceListSchema}, "errors": [403],
                          "notes": "Admin only."},
    "services.service_toggle": {"body": {"$ref": _ref(schemas.ServiceToggleSchema)},
                                "responses": {200: schemas.ServiceToggleReplySchema},
                                "errors": [400, 403, 404], "notes": "Admin only."},
    "availability_zones.availability_zones": {
        "responses": {200: schemas.AvailabilityZoneListSchema}},
}


# ------------------------------------------------------------------------ marshmallow → JSON Schema


def _validators(field: fields.Field) -> list:
    v = field.validators if hasattr(field, "validators") else []
    return list(v or [])


def field_schema(field: fields.Field, components: dict) -> dict:
    """The JSON Schema (OpenAPI 3.0 dialect) of one marshmallow field."""
    out: dict
    if isinstance(field, fields.Nested):
        nested = field.nested if isinstance(field.nested, type) else type(field.nested)
        out = {"$ref": register(nested, components)}
    elif isinstance(field, fields.List):
        out = {"type": "array", "items": field_schema(field.inner, components)}
    elif isinstance(field, fields.Dict):
        out = {"type": "object"}
        if field.value_field is not None:
            out["additionalProperties"] = field_schema(field.value_field, components)
        if field.key_field is not None:
            for v in _validators(field.key_field):
                if isinstance(v, validate.Regexp):
                    out["x-key-pattern"] = v.regex.pattern
    elif isinstance(field, (schemas.UUIDString, fields.UUID)):
        out = {"type": "string", "format": "uuid"}
    elif isinstance(field, fields.String):
        out = {"type": "string"}
    elif isinstance(field, schemas.LenientBool):
        out = {"oneOf": [{"type": "boolean"},
                         {"type": "string", "enum": sorted(schemas.TRUE | schemas.FALSE),
                          "description": "any case"}]}
    elif isinstance(field, schemas.WholeNumber):
        out = {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^-?[0-9]+$"}]}
    elif isinstance(field, fields.Integer):
        out = {"type": "integer"}
    elif isinstance(field, fields.Boolean):
        out = {"type": "boolean"}
    else:
        out = {}
    for v in _validators(field):
        if isinstance(v, validate.Length):
            if v.min is not None:
                out["minLength"] = v.min
            if v.max is not None:
                out["maxLength"] = v.max
        elif isinstance(v, validate.Range):
            target = out if "type" in out else {}
            if v.min is not None:
                target["minimum"] = v.min
            if v.max is not None:
                target["maximum"] = v.max
            if target is not out:
                out["x-range"] = target
        elif isinstance(v, validate.Regexp):
            out["pattern"] = v.regex.pattern
    if field.allow_none:
        out["nullable"] = True
    description = (field.metadata or {}).get("description")
    if description:
        out["description"] = description
    enum = (field.metadata or {}).get("enum")
    if enum:
        out["enum"] = enum
    return out


def register(schema: type[Schema], components: dict) -> str:
    """Add a schema (and the schemas it nests) to ``components``; returns its $ref."""
    name = _schema_name(schema)
    if name in components:
        return _ref_name(name)
    components[name] = {}  # placeholder: stops recursion on self-references
    instance = schema()
    properties, required = {}, []
    for attr, field in instance.fields.items():
        key = field.data_key or attr
        properties[key] = field_schema(field, components)
        if field.required:
            required.append(key)
    body: dict = {"type": "object", "properties": properties}
    if required:
        body["required"] = required
    if instance.unknown == RAISE and issubclass(schema, schemas.StrictSchema):
        body["additionalProperties"] = False
    if schema.__doc__:
        body["description"] = " ".join(schema.__doc__.split())
    components[name] = body
    return _ref_name(name)


def _resolve(value, components: dict):
    """Swap the schema classes left in OPERATIONS for $refs, registering them."""
    if isinstance(value, type) and issubclass(value, Schema):
        return {"$ref": register(value, components)}
    if isinstance(value, dict):
        if "$ref" in value and value["$ref"].startswith(_ref_name("")):
            name = value["$ref"][len(_ref_name("")):]
            for candidate in vars(schemas).values():
                if isinstance(candidate, type) and issubclass(candidate, Schema) and \
                        _schema_name(candidate) == name:
                    register(candidate, components)
        return {k: _resolve(v, components) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, components) for v in value]
    return value


# ----------------------------------------------------------------------------- document

_RULE_ARG = re.compile(r"<(?:[a-z]+:)?([A-Za-z_][A-Za-z0-9_]*)>")
FAULT_TEXT = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
              405: "badMethod", 406: "computeFault (microversion outside 3.0-3.71)",
              413: "overLimit (quota, or a body over the size limit)",
              415: "badMediaType", 503: "serviceUnavailable"}
VERSION_HEADER = {
    "name": "OpenStack-API-Version", "in": "header", "required": False,
    "description": f"`volume {MIN_VERSION[0]}.{MIN_VERSION[1]}` .. "
                   f"`volume {MAX_VERSION[0]}.{MAX_VERSION[1]}` or `volume latest`; "
                   "absent means 3.0. Malformed: 400; out of range: 406.",
    "schema": {"type": "string", "example": "volume 3.71"}}


def build_document(app: Flask) -> dict:
    """The whole OpenAPI document for ``app``'s routes."""
    components: dict = {}
    paths: dict = {}
    fault_ref = register(schemas.FaultSchema, components)
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, sorted(r.methods))):
        endpoint = rule.endpoint
        bp_name, _, func = endpoint.partition(".")
        key = f"{bp_name.removesuffix('_project')}.{func}"
        extra = OPERATIONS.get(key)
        if extra is None:
            continue
        path = _RULE_ARG.sub(r"{\1}", rule.rule)
        if path != "/" and path.endswith("/"):
            continue  # the trailing-slash twin of a documented path
        view = app.view_functions[endpoint]
        summary = (view.__doc__ or func).strip().splitlines()[0]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            op = _operation(method, path, key, summary, extra, fault_ref, components)
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Volume backup orchestrator: Cinder Block Storage API v3 subset",
                 "version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
                 "description": "Cinder v3 compatible. Every /v3 route exists with and without "
                                "the /{project_id} segment; a project segment other than the "
                                "caller's is a 400. Faults are "
                                "{\"<faultName>\": {\"code\": N, \"message\": \"...\"}}."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"token": {
                "type": "apiKey", "in": "header", "name": "X-Auth-Token",
                "description": "ORCH_AUTH=token: a secret from `orchestrator token create`; "
                               "ORCH_AUTH=noauth: `user_id:project_id`."}},
        },
        "security": [{"token": []}],
    }


def _operation(method: str, path: str, key: str, summary: str, extra: dict, fault_ref: str,
               components: dict) -> dict:
    area = key.split(".")[0]
    op: dict = {"operationId": _operation_id(method, path), "summary": summary,
                "tags": extra.get("tags") or [area if area not in MISC
                                              else path.split("/")[-1].split("{")[0] or "misc"]}
    params = []
    for name in _RULE_ARG.findall(path.replace("{", "<").replace("}", ">")):
        params.append({"name": name, "in": "path", "required": True,
                       "schema": {"type": "string"}})
    params.extend(extra.get("query", []))
    if extra.get("auth", True):
        params.append(VERSION_HEADER)
    else:
        op["security"] = []
    if params:
        op["parameters"] = params
    if extra.get("notes"):
        op["description"] = extra["notes"]
    if extra.get("body") is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": _resolve(extra["body"], components)}}}
    responses: dict = {}
    for status, schema in extra.get("responses", {}).items():
        if schema is None:
            responses[str(status)] = {"description": "No body."}
        else:
            responses[str(status)] = {"description": "OK", "content": {"application/json": {
                "schema": _resolve(schema, components)}}}
    codes = set(extra.get("errors", []))
    if extra.get("auth", True):
        codes |= {400, 401, 406}
        if method in ("POST", "PUT"):
            codes |= {413, 415}
        if method != "GET":
            codes.add(403)
    for code in sorted(codes):
        responses[str(code)] = {"description": FAULT_TEXT.get(code, "fault"),
                                "content": {"application/json": {"schema": {"$ref": fault_ref}}}}
    op["responses"] = responses
    return op


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}").replace("-", "_").replace("~", "") for w in path.split("/") if w]
    return method.lower() + "_" + "_".join(words or ["root"])


@bp.get("/openapi.json")
def document():
    """This API's OpenAPI 3 document (no credentials needed)."""
    doc = current_app.extensions.get("orch_openapi")
    if doc is None:
        doc = current_app.extensions["orch_openapi"] = build_document(current_app)
    return jsonify(doc)
