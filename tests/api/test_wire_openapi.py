"""The served OpenAPI document: complete, self-consistent, and true to real replies."""
from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import requests
from wire_helpers import call


@pytest.fixture(scope="module")
def stack(stacks):
    return stacks("noauth")


@pytest.fixture(scope="module")
def doc(stack):
    r = requests.get(f"{stack.url}/openapi.json", timeout=30)  # no credentials needed
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    return r.json()


def test_every_route_is_documented_in_both_url_forms(stack, doc):
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == "3.71"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    for rule in stack.api.app.url_map.iter_rules():
        if rule.endpoint in ("static", "openapi.document") or \
                rule.endpoint.startswith("operational.") or (rule.rule.endswith("/") and \
                rule.rule != "/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (method, path) in documented, (method, path)
    assert ("GET", "/v3/{project_id}/backups/detail") in documented
    assert ("POST", "/v3/backups/{backup_id}/action") in documented


def test_every_reference_resolves_and_operations_are_described(doc):
    schemas = doc["components"]["schemas"]
    refs = re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', str(doc).replace("'", '"'))
    assert refs and all(name in schemas for name in refs)
    ids = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and op["responses"], (method, path)
            assert op["operationId"] not in ids
            ids.add(op["operationId"])
    create = doc["paths"]["/v3/backups"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"]["properties"]["backup"] == \
        {"$ref": "#/components/schemas/BackupCreate"}
    backup_create = schemas["BackupCreate"]
    assert backup_create["required"] == ["volume_id"]
    assert backup_create["additionalProperties"] is False
    assert backup_create["properties"]["name"]["maxLength"] == 255
    assert doc["paths"]["/"]["get"]["security"] == []


def _json_schema(node, schemas):
    """OpenAPI 3.0 schema → plain JSON Schema (resolve $ref, nullable → null type)."""
    if isinstance(node, list):
        return [_json_schema(n, schemas) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _json_schema(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
    out = {k: _json_schema(v, schemas) for k, v in node.items()
           if k not in ("nullable", "example") and not k.startswith("x-")}
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.mark.parametrize("path,op", [
    ("/backups/detail?with_count=true&limit=1", "/v3/backups/detail"),
    ("/backups/{backup}", "/v3/backups/{backup_id}"),
    ("/volumes/{volume}", "/v3/volumes/{volume_id}"),
    ("/snapshots/detail", "/v3/snapshots/detail"),
    ("/os-availability-zone", "/v3/os-availability-zone"),
    ("/limits", "/v3/limits"),
])
def test_real_replies_match_the_documented_schemas(stack, doc, path, op):
    ids = stack.world().ids["alpha"]
    url = path.format(**ids)
    r = call(stack, "GET", url, token=stack.creds("alpha"))
    assert r.status_code == 200, r.text
    schema = doc["paths"][op]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"]
    jsonschema.validate(r.json(), _json_schema(copy.deepcopy(schema),
                                               doc["components"]["schemas"]))


def test_faults_match_the_documented_fault_schema(stack, doc):
    r = call(stack, "GET", "/backups/nope", token=stack.creds("alpha"))
    fault = doc["paths"]["/v3/backups/{backup_id}"]["get"]["responses"]["404"]
    schema = _json_schema(fault["content"]["application/json"]["schema"],
                          doc["components"]["schemas"])
    jsonschema.validate(r.json(), schema)
    assert r.json()["itemNotFound"]["message"] == "Backup nope could not be found."
