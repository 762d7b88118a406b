"""Reply helpers: self, bookmark and next links, list pages, empty replies, timestamps."""
from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from flask import g
from flask import jsonify
from flask import make_response
from flask import request

from orchestrator.http.current import settings


def base_url() -> str:
    """The public endpoint if configured, else this request's host URL (no trailing /)."""
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
    out: dict = {key: rendered}
    links = next_link(items, limit, count)
    if links:
        out[f"{key}_links"] = links
    if count is not None:
        out["count"] = count
    return jsonify(out)


def empty_response(status: int):
    """A reply without a body (and without a Content-Type)."""
    response = make_response("", status)
    response.headers.pop("Content-Type", None)
    return response


def timestamp(value: dt.datetime | None) -> str | None:
    """Naive UTC, always with microseconds, no zone suffix (contract §1)."""
    return value.isoformat(timespec="microseconds") if value else None
