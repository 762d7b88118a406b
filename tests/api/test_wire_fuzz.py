"""Property-based fuzzing of every operation in the served OpenAPI document.

For each operation (both auth modes), hypothesis sends arbitrary path
parameters, query strings, headers (credentials, microversions, content
types) and bodies: schema-shaped ones built from the document, mutated ones
and arbitrary JSON or bytes. Properties:

* never a 5xx, except 503 serviceUnavailable for a zone without a live host
  (the contract's answer when no backup service can take the work);
* every error is a Cinder fault (one key, ``code`` = status, a message), and
  every /v3 reply carries ``OpenStack-API-Version``;
* a rejected request (4xx/5xx) changes nothing in the database.

The app runs in-process (Flask's test client, real SQLite and a real Redis
broker, no worker: accepted jobs just wait in their queues) so that a few
thousand requests fit in well under a minute. Runs are derandomized.
"""
from __future__ import annotations

import datetime as dt
import json
import string
from urllib.parse import quote
from urllib.parse import urlencode

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from orch_testlib import make_settings
from sqlalchemy import select

from orchestrator import hosts
from orchestrator import tokens
from orchestrator.api import DRIVER_ID
from orchestrator.db import get_database
from orchestrator.db import utcnow
from orchestrator.http import create_app
from orchestrator.migrate import upgrade
from orchestrator.models import Backup
from orchestrator.models import BackupMetadata
from orchestrator.models import Base
from orchestrator.models import Snapshot
from orchestrator.models import Volume
from orchestrator.models import new_id

MODES = ["noauth", "token"]
EXAMPLES = {"noauth": 60, "token": 25}


class Target:
    """The app under fuzz, its database, the seeded ids and the credentials to try."""

    def __init__(self, mode: str, tmp, redis_url: str):
        self.mode = mode
        self.settings = make_settings(tmp, redis_url, auth=mode, max_body_bytes=65536)
        upgrade(self.settings.database_url)
        self.db = get_database(self.settings.database_url)
        self.app = create_app(self.settings)
        self.client = self.app.test_client()
        self.ids: dict[str, list[str]] = {"volume": [], "snapshot": [], "backup": []}
        self._seed()
        self.doc = self.client.get("/openapi.json").get_json()

    def _seed(self) -> None:
        now = utcnow()
        alive = now + dt.timedelta(days=365)  # heartbeats that stay fresh for the whole run
        with self.db.scope() as s:
            for binary in (hosts.BACKUP_BINARY, hosts.VOLUME_BINARY):
                hosts.record_heartbeat(s, "fuzz-node", binary, "nova", now=alive)
            for project in ("alpha", "beta"):
                vol = Volume(id=new_id(), project_id=project, user_id="u", host="fuzz-node",
                             availability_zone="nova", size=1, status="available",
                             display_name=f"{project}-vol", metadata_={"k": "v"},
                             created_at=now)
                busy = Volume(id=new_id(), project_id=project, user_id="u", host="fuzz-node",
                              availability_zone="nova", size=2, status="in-use",
                              created_at=now)
                snap = Snapshot(id=new_id(), project_id=project, user_id="u", volume_id=vol.id,
                                status="available", size=1, created_at=now)
                full = Backup(id=new_id(), user_id="u", project_id=project, volume_id=vol.id,
                              status="available", size=1, display_name=f"{project}-full",
                              host="fuzz-node", availability_zone="nova", created_at=now,
                              data_timestamp=now, object_count=1, service=DRIVER_ID,
                              container="c", service_metadata="p")
                full.metadata_items = [BackupMetadata(key="k", value="v", created_at=now)]
                incr = Backup(id=new_id(), user_id="u", project_id=project, volume_id=vol.id,
                              status="available", size=1, parent_id=full.id, host="fuzz-node",
                              availability_zone="nova", created_at=now, data_timestamp=now,
                              object_count=1, service=DRIVER_ID)
                failed = Backup(id=new_id(), user_id="u", project_id=project, volume_id=vol.id,
                                status="error", size=1, host="fuzz-node", created_at=now,
                                availability_zone="nova", data_timestamp=now, object_count=0)
                s.add_all([vol, busy, snap, full, incr, failed])
                self.ids["volume"] += [vol.id, busy.id]
                self.ids["snapshot"].append(snap.id)
                self.ids["backup"] += [full.id, incr.id, failed.id]
        if self.mode == "noauth":
            self.good_creds = ["u:alpha", "admin:alpha", "u:beta", ":alpha"]
            self.creds = [*self.good_creds, "garbage token", "", "a:" + "b" * 300]
        else:
            self.good_creds = []
            with self.db.scope() as s:
                for role in ("member", "admin", "reader"):
                    _, secret = tokens.issue(s, user_id="u", project_id="alpha", roles=[role],
                                             now=now)
                    self.good_creds.append(secret)
                _, secret = tokens.issue(s, user_id="u", project_id="beta", roles=["member"],
                                         now=now)
                self.good_creds.append(secret)
            self.creds = [*self.good_creds, "orch_wrong", "", "u:alpha"]

    def state(self) -> dict:
        """Every row of every table."""
        out = {}
        with self.db.engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                out[table.name] = sorted(tuple(map(repr, row)) for row in conn.execute(
                    select(table)))
        return out


@pytest.fixture(scope="module", params=MODES)
def target(request, tmp_path_factory, redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/{12 + MODES.index(request.param)}"
    redis.Redis.from_url(url).flushdb()
    return Target(request.param, tmp_path_factory.mktemp(f"fuzz-{request.param}"), url)


def operations() -> list[tuple[str, str]]:
    """(method, path) of every operation in the document (the /v3/{project_id} twins are
    reached by rewriting paths at random in the strategy)."""
    from orchestrator.http.openapi import build_document
    doc = build_document(_routes_only_app())
    return sorted((method.upper(), path) for path, ops in doc["paths"].items()
                  for method in ops if not path.startswith("/v3/{project_id}"))


def _routes_only_app():
    """An app with the real routes but no database or broker: enough to list operations."""
    from flask import Flask

    from orchestrator.http import register_routes
    app = Flask("routes-only")
    register_routes(app)
    return app


OPERATIONS = operations()

# ----------------------------------------------------------------------------- strategies

printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
any_text = st.text(max_size=40)
json_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | \
    st.floats(allow_nan=False, allow_infinity=False) | any_text
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                        st.dictionaries(any_text, inner, max_size=4), max_leaves=12)


def id_strategy(target: Target, kind: str | None):
    pool = [i for k, ids in target.ids.items() if kind in (None, k) for i in ids]
    every = [i for ids in target.ids.values() for i in ids]
    return st.sampled_from(pool or every) | st.sampled_from(every) | \
        st.uuids().map(str) | printable


def from_schema(schema: dict, target: Target, components: dict, depth: int = 0):
    """Values shaped like a JSON Schema of the document (edges included)."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[1]], target, components,
                           depth)
    if depth > 4:
        return any_json
    nullable = st.none() if schema.get("nullable") else st.nothing()
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return st.one_of([from_schema(s, target, components, depth + 1)
                              for s in schema[key]]) | nullable
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | nullable
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        if not props:
            return st.dictionaries(printable, json_scalars, max_size=3) | nullable
        required = {k: from_schema(v, target, components, depth + 1)
                    for k, v in props.items() if k in schema.get("required", [])}
        optional = {k: from_schema(v, target, components, depth + 1)
                    for k, v in props.items() if k not in required}
        base = st.fixed_dictionaries(required, optional=optional)
        if "additionalProperties" in schema and isinstance(schema["additionalProperties"],
                                                           dict):
            base = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_:. -]{0,8}", fullmatch=True) |
                                   printable,
                                   from_schema(schema["additionalProperties"], target,
                                               components, depth + 1), max_size=3)
        return base | nullable
    if kind == "string":
        if schema.get("format") == "uuid":
            name = schema.get("x-kind")
            return id_strategy(target, name) | nullable
        longest = schema.get("maxLength", 30)
        plain = st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=12)
        return plain | st.text(max_size=min(longest + 2, 300)) | \
            st.sampled_from(["", "available", "error", "nova", "true", "0", " padded "]) | nullable
    if kind == "integer":
        lo, hi = schema.get("minimum", -5), schema.get("maximum", 2**31)
        return st.integers(max(lo, 1), 30) | st.integers(lo - 2, min(hi, 10**6) + 2) | \
            st.sampled_from([hi, hi + 1]) | nullable
    if kind == "boolean":
        return st.booleans() | nullable
    return any_json | nullable


def _record(backup_id: str) -> str:
    import base64
    return base64.b64encode(json.dumps({"id": backup_id, "size": 1, "container": "c",
                                        "service_metadata": "p"}).encode()).decode()


def templates(method: str, path: str, ids) -> list[dict]:
    """Valid bodies of an operation (``ids`` draws a seeded id): the start of near-misses."""
    table = {
        ("POST", "/v3/backups"): [{"backup": {
            "volume_id": ids("volume"), "name": "n", "description": None, "container": None,
            "incremental": False, "force": False, "snapshot_id": None}},
            {"backup": {"volume_id": ids("volume"), "snapshot_id": ids("snapshot"),
                        "metadata": {"k": "v"}, "availability_zone": "nova"}}],
        ("PUT", "/v3/backups/{backup_id}"): [{"backup": {"name": "n2", "description": "d",
                                                         "metadata": {"a": "b"}}}],
        ("POST", "/v3/backups/{backup_id}/restore"): [{"restore": {"volume_id": None,
                                                                   "name": "r"}},
                                                      {"restore": {"volume_id": ids("volume"),
                                                                   "name": None}}],
        ("POST", "/v3/backups/{backup_id}/action"): [{"os-reset_status": {"status": "error"}},
                                                     {"os-force_delete": None},
                                                     {"os-verify": None}],
        ("POST", "/v3/backups/import_record"): [{"backup-record": {
            "backup_service": DRIVER_ID, "backup_url": _record(ids("backup"))}}],
        ("POST", "/v3/volumes"): [{"volume": {"size": 1, "name": "v"}},
                                  {"volume": {"size": 1, "backup_id": ids("backup")}}],
        ("POST", "/v3/snapshots"): [{"snapshot": {"volume_id": ids("volume"), "name": "s",
                                                  "force": True}}],
        ("PUT", "/v3/os-quota-sets/{target}"): [{"quota_set": {"backups": 20,
                                                               "tenant_id": "x"}}],
        ("PUT", "/v3/os-services/{action}"): [{"host": "fuzz-node",
                                               "binary": "cinder-backup"}],
    }
    return table.get((method, path), [])


@st.composite
def near_miss(draw, target: Target, method: str, path: str):
    """A valid body, kept as is or with one inner key replaced, dropped or added."""
    pick = lambda kind: draw(id_strategy(target, kind))
    options = templates(method, path, pick)
    if not options:
        return draw(any_json)
    body = draw(st.sampled_from(options))
    outer = next(iter(body))
    inner = body[outer] if isinstance(body[outer], dict) else body
    how = draw(st.integers(0, 4))
    if how == 1 and inner:
        inner[draw(st.sampled_from(sorted(inner)))] = draw(any_json)
    elif how == 2 and inner:
        inner.pop(draw(st.sampled_from(sorted(inner))))
    elif how == 3:
        inner[draw(printable)] = draw(json_scalars)
    return body


@st.composite
def requests_for(draw, target: Target, method: str, path: str):
    op = target.doc["paths"][path][method.lower()]
    components = target.doc["components"]["schemas"]
    params = {}
    for param in op.get("parameters", []):
        if param["in"] != "path":
            continue
        name = param["name"]
        if name.endswith("_id") and name != "project_id":
            params[name] = draw(id_strategy(target, name[:-3]))
        elif name == "target":
            params[name] = draw(st.sampled_from(["alpha", "beta", "admin"]) | printable)
        elif name == "action":
            params[name] = draw(st.sampled_from(["enable", "disable", "disable-log-reason"]) |
                                printable)
        else:
            params[name] = draw(printable)
    url = path
    for name, value in params.items():
        url = url.replace("{" + name + "}", quote(value, safe="") or "x")
    if path.startswith("/v3/") and draw(st.integers(0, 3)) == 3:
        url = "/v3/" + draw(st.sampled_from(["alpha", "alpha", "beta", "x"])) + url[3:]
    documented = {p["name"]: p["schema"] for p in op.get("parameters", []) if p["in"] == "query"}
    generic = st.sampled_from(["1", "true", "0", "-1", "x", "", "asc", "name:asc",
                               '{"k": "v"}', "available"]) | id_strategy(target, None) | any_text
    query = []
    for _ in range(draw(st.integers(0, 4))):
        if documented and draw(st.integers(0, 4)) != 4:
            key = draw(st.sampled_from(sorted(documented)))
            schema = documented[key]
            if "enum" in schema:
                value = draw(st.sampled_from(schema["enum"] + ["x", "", "2", "TRUE"]))
            elif schema.get("type") == "integer":
                value = draw(st.integers(-3, 3000).map(str) |
                             st.sampled_from(["x", "", "1.5", "99999999999999999999"]))
            else:
                value = draw(generic)
        else:
            key, value = draw(printable), draw(generic)
        query.append((key, value))
    if query:
        url += "?" + urlencode(query)
    headers = {}
    token = draw(st.sampled_from(target.good_creds * 3 + target.creds + [None]))
    if token is not None:
        headers["X-Auth-Token"] = token
    version = draw(st.sampled_from(
        ["volume 3.71", "volume 3.64", "volume latest", "volume 3.51", "volume 3.45",
         "volume 3.43", "volume 3.9", "volume 3.0", None, None, "volume 3.72", "volume 2.0",
         "volume 3.x", "compute 2.1", "volume"]) | st.integers(0, 71).map(
        lambda n: f"volume 3.{n}"))
    if draw(st.integers(0, 19)) == 19:
        version = draw(printable)
    if version is not None:
        headers["OpenStack-API-Version"] = version
    if draw(st.integers(0, 9)) == 9:
        headers["X-Roles"] = draw(st.sampled_from(["admin", "reader", "member,admin"]))
    data = None
    if method in ("POST", "PUT") or draw(st.integers(0, 9)) == 9:
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get(
            "schema")
        shaped = from_schema(schema, target, components) if schema else any_json
        near = near_miss(target, method, path)
        body = draw(st.one_of(
            near, near, near, shaped, shaped,
            shaped.flatmap(lambda v: st.just(v) if not isinstance(v, dict) else
                           st.dictionaries(printable, any_json, max_size=2).map(
                               lambda extra: {**v, **extra})),
            any_json))
        if draw(st.integers(0, 19)) == 19:
            data = draw(st.binary(max_size=64))
        else:
            data = json.dumps(body)
        ctype = draw(st.sampled_from(["application/json"] * 6 +
                                     ["text/plain", "application/json; charset=utf-8", None]))
        if ctype:
            headers["Content-Type"] = ctype
    return method, url, headers, data


# ----------------------------------------------------------------------------- the property


@pytest.mark.parametrize("method,path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_5xx_and_rejections_change_nothing(target, method, path):
    @hsettings(max_examples=EXAMPLES[target.mode], derandomize=True, database=None,
               deadline=None, suppress_health_check=list(HealthCheck))
    @given(req=requests_for(target, method, path))
    def check(req):
        verb, url, headers, data = req
        before = target.state()
        r = target.client.open(url, method=verb, headers=headers, data=data)
        where = f"{verb} {url} {headers} {data!r:.300} → {r.status_code} {r.data[:300]!r}"
        if r.status_code == 503:
            assert "serviceUnavailable" in r.get_json(), where
        else:
            assert r.status_code < 500, where
        if r.status_code >= 400:
            body = r.get_json(silent=True)
            assert isinstance(body, dict) and len(body) == 1, where
            fault = next(iter(body.values()))
            assert fault["code"] == r.status_code and isinstance(fault["message"], str), where
            assert target.state() == before, f"a rejected request changed the database: {where}"
        if r.status_code in (202, 204) and verb in ("DELETE",):
            assert r.data == b"", where
        body = r.get_json(silent=True)
        if url.startswith("/v3/") and not (isinstance(body, dict) and "versions" in body):
            assert r.headers.get("OpenStack-API-Version", "").startswith("volume 3."), where

    check()
