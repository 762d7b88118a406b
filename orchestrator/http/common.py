"""Request plumbing shared by the blueprints: context, session, body, links, dispatch."""
from __future__ import annotations

import datetime as dt
import json
from urllib.parse import urlencode

from flask import current_app
from flask import g
from flask import request
from marshmallow import Schema
from marshmallow import ValidationError
from sqlalchemy.orm import Session

from orchestrator import errors
from orchestrator.context import RequestContext
from orchestrator.db import utcnow

COLLECTIONS = frozenset({"volumes", "snapshots", "backups", "os-services", "os-quota-sets",
                         "os-availability-zone", "limits", "types", "extensions"})


def ctx() -> RequestContext:
    return g.context


def mv():
    return g.api_version


def settings():
    return current_app.config["ORCH_SETTINGS"]


def session(write: bool = False) -> Session:
    """The request's session, opened lazily; writes use the immediate-lock engine."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["orch_db"].session(write=write)
        g.db_session_write = write
    return g.db_session


def reader():
    """A read-only Core connection for the request (cheaper than an ORM session)."""
    if "db_reader" not in g:
        g.db_reader = current_app.extensions["orch_db"].engine.connect()
    return g.db_reader


def commit_and_dispatch(jobs) -> None:
    """Commit the request's transaction, then hand its jobs to the broker.

    :raises BrokerUnavailable: the request's writes have been undone.
    """
    from orchestrator.dispatch import dispatch
    s = g.db_session
    s.commit()
    if jobs:
        dispatch(current_app.extensions["orch_db"], current_app.extensions["orch_publisher"],
                 jobs, undo_on_failure=True)


def now() -> dt.datetime:
    return utcnow()


def body() -> dict:
    """The JSON body as a dict.

    :raises UnsupportedMediaType: a body that is not declared as JSON (415).
    :raises InvalidInput: malformed, not an object, or holding text no database can store.
    """
    raw = request.get_data(cache=True)
    ctype = request.mimetype or ""
    if raw and ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(ctype)
    if not raw:
        raise errors.InvalidInput("Malformed request body: the body is empty.")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.InvalidInput("Malformed request body") from None
    if not isinstance(data, dict):
        raise errors.InvalidInput("Malformed request body: expected a JSON object.")
    _check_text(data, depth=0)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value, depth: int) -> None:
    """Refuse NUL characters and unpaired surrogates (PostgreSQL and UTF-8 cannot hold them)."""
    if depth > 32:
        raise errors.InvalidInput("Malformed request body: nested too deeply.")
    if isinstance(value, str):
        if "\x00" in value:
            raise errors.InvalidInput("Malformed request body: NUL characters are not "
                                      "allowed in strings.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidInput("Malformed request body: strings must be valid "
                                      "Unicode (unpaired surrogate).") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, depth + 1)
            _check_text(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_text(v, depth + 1)


def check_request_text() -> None:
    """Refuse NUL characters in the path and the query string. :raises InvalidInput:"""
    if "\x00" in request.path or any("\x00" in k or "\x00" in v
                                     for k, v in request.args.items(multi=True)):
        raise errors.InvalidInput("Invalid input received: NUL characters are not allowed in "
                                  "the URL.")


class UnsupportedMediaType(errors.OrchestratorError):
    code = 415
    default_message = "Unsupported Content-Type"

    def __init__(self, ctype: str | None = None):
        super().__init__(f"Unsupported Content-Type {ctype!r}: send application/json."
                         if ctype else None)


def load(schema: Schema, data) -> dict:
    """Validate with a marshmallow schema. :raises InvalidInput: naming the field."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise errors.InvalidInput(f"Invalid input received: {_flatten(exc.messages)}") from None


def _flatten(messages, prefix="") -> str:
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            name = f"{prefix}{key}" if key != "_schema" else prefix.rstrip(".")
            parts.append(_flatten(value, f"{name}." if name else ""))
        return "; ".join(parts)
    if isinstance(messages, list):
        text = " ".join(str(m) for m in messages)
        return f"{prefix.rstrip('.')}: {text}" if prefix else text
    return f"{prefix.rstrip('.')}: {messages}" if prefix else str(messages)


def base_url() -> str:
    configured = settings().public_endpoint
    return configured.rstrip("/") if configured else request.host_url.rstrip("/")


def link_prefixes() -> tuple[str, str]:
    """The self and bookmark URL prefixes of this request (computed once per request)."""
    prefixes = g.get("link_prefixes")
    if prefixes is None:
        base = base_url()
        project = g.get("url_project")
        tail = f"/{project}" if project else ""
        prefixes = g.link_prefixes = (f"{base}/v3{tail}/", f"{base}{tail}/")
    return prefixes


def resource_links(collection: str, resource_id: str,
                   prefixes: tuple[str, str] | None = None) -> list[dict]:
    """Cinder's self/bookmark links; a list page passes ``link_prefixes()`` in once."""
    prefixes = prefixes or link_prefixes()
    return [{"rel": "self", "href": f"{prefixes[0]}{collection}/{resource_id}"},
            {"rel": "bookmark", "href": f"{prefixes[1]}{collection}/{resource_id}"}]


def next_link(items: list, limit: int | None, count: int | None) -> list[dict] | None:
    """Cinder's rule: a next link when a further page may exist, never on an empty page."""
    if not items:
        return None
    effective = limit if limit is not None else settings().max_list_limit
    if effective > (count if count is not None else len(items)):
        return None
    params = [(k, v) for k, v in request.args.items(multi=True) if k != "marker"]
    params.append(("marker", items[-1].id))
    url = f"{base_url()}{request.path}?{urlencode(params)}"
    return [{"rel": "next", "href": url}]


def list_response(key: str, rendered: list[dict], items: list, limit: int | None,
                  count: int | None):
    """``{key: [...], key_links: [next], count: N}`` with Cinder's next-link rule."""
    from flask import jsonify
    out: dict = {key: rendered}
    links = next_link(items, limit, count)
    if links:
        out[f"{key}_links"] = links
    if count is not None:
        out["count"] = count
    return jsonify(out)


def timestamp(value: dt.datetime | None) -> str | None:
    """Naive UTC, always with microseconds, no zone suffix (contract §1)."""
    return value.isoformat(timespec="microseconds") if value else None


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise errors.InvalidInput(f"Invalid input received: {name} must be a boolean, got "
                              f"'{value}'.")


DB_MAX_INT = 2**31 - 1
PAGING_KEYS = {"limit", "marker", "offset", "sort", "sort_key", "sort_dir", "with_count",
               "all_tenants"}


def list_params(*, user_filters: set[str], name_column: str = "display_name",
                name_sort_since: str | None = None) -> dict:
    """Parse paging, sorting, scoping and filters of a list request (contract §5.3).

    :raises InvalidInput:
    """
    args = request.args
    out: dict = {"filters": {}, "like_filters": {}}
    limit = args.get("limit")
    if limit is not None:
        try:
            limit_i = int(limit)
        except ValueError:
            raise errors.InvalidInput("Invalid input received: limit param must be an "
                                      "integer") from None
        if limit_i < 0:
            raise errors.InvalidInput("Invalid input received: limit param must be positive")
        out["limit"] = min(limit_i, settings().max_list_limit)
    else:
        out["limit"] = None
    offset = args.get("offset")
    if offset is not None:
        try:
            offset_i = int(offset)
        except ValueError:
            raise errors.InvalidInput("Invalid input received: offset param must be an "
                                      "integer") from None
        if offset_i < 0:
            raise errors.InvalidInput("Invalid input received: offset param must be positive")
        if offset_i > DB_MAX_INT:
            raise errors.InvalidInput(f"Invalid input received: offset param must be <= "
                                      f"{DB_MAX_INT}")
        out["offset"] = offset_i
    else:
        out["offset"] = None
    out["marker"] = args.get("marker") or None
    out["sort"] = _sort(args, name_column, name_sort_since)
    c = ctx()
    all_tenants = False
    if "all_tenants" in args and c.is_admin:
        all_tenants = parse_bool("all_tenants", args["all_tenants"])
    out["all_tenants"] = all_tenants
    with_count = False
    if "with_count" in args and mv().matches("3.45"):
        with_count = parse_bool("with_count", args["with_count"])
    out["with_count"] = with_count
    invalid = []
    for key, value in args.items():
        if key in PAGING_KEYS:
            continue
        like = key.endswith("~") and mv().matches("3.34")
        column = key[:-1] if like else key
        column = name_column if column == "name" else column
        if not c.is_admin and column not in user_filters | {name_column}:
            invalid.append(key)
            continue
        if column == "metadata":
            if like:
                invalid.append(key)
                continue
            value = parse_metadata_filter(value)
        (out["like_filters"] if like else out["filters"])[column] = value
    if invalid and mv().matches("3.31"):
        raise errors.InvalidInput(f"Invalid input received: Invalid filters "
                                  f"{', '.join(sorted(invalid))} are found in query options.")
    # Below 3.31 Cinder silently drops the filters a non-admin may not use.
    return out


def parse_metadata_filter(text: str) -> dict[str, str]:
    """``metadata={"k": "v"}`` as JSON or as the Python dict repr cinderclient sends.

    :raises InvalidInput:
    """
    import ast

    from orchestrator.http.schemas import METADATA_KEY
    parsed = None
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        try:
            parsed = ast.literal_eval(text) if len(text) <= 4096 else None
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            parsed = None
    if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and METADATA_KEY.match(k) and isinstance(v, (str, int, float))
            and not isinstance(v, bool) and len(str(v)) <= 255 for k, v in parsed.items()):
        raise errors.InvalidInput(f"Invalid input received: the metadata filter {text!r} must "
                                  "be a dict of metadata keys to strings, e.g. "
                                  "metadata={\"k\": \"v\"}.")
    return {k: str(v) for k, v in parsed.items()}


def _sort(args, name_column: str, name_sort_since: str | None) -> list[tuple[str, str]] | None:
    sort = args.get("sort")
    key, direction = args.get("sort_key"), args.get("sort_dir")
    if sort and (key or direction):
        raise errors.InvalidInput("Invalid input received: The 'sort_key' and 'sort_dir' "
                                  "parameters are deprecated and cannot be used with the 'sort' "
                                  "parameter.")
    pairs: list[tuple[str, str]] = []
    if sort:
        for item in sort.split(","):
            k, _, d = item.strip().partition(":")
            pairs.append((k.strip(), (d.strip() or "desc").lower()))
    elif key or direction:
        keys = (key or "created_at").split(",")
        dirs = (direction or "desc").split(",")
        for i, k in enumerate(keys):
            pairs.append((k.strip(), (dirs[i] if i < len(dirs) else dirs[-1]).strip().lower()))
    if not pairs:
        return None
    out = []
    for k, d in pairs:
        if d not in ("asc", "desc"):
            raise errors.InvalidInput(f"Invalid input received: Unknown sort direction {d}, "
                                      "must be 'desc' or 'asc'.")
        if k == "name":
            if name_sort_since and not mv().matches(name_sort_since):
                raise errors.InvalidInput("Invalid input received: Invalid sort key name.")
            k = name_column
        if not k:
            raise errors.InvalidInput("Invalid input received: empty sort key.")
        out.append((k, d))
    return out
