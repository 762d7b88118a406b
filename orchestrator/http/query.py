"""Query strings: booleans, and the paging, sorting, scoping and filters of a list
(contract §5.3)."""
from __future__ import annotations

import ast
import json

from flask import request

from orchestrator import errors
from orchestrator.http.current import ctx
from orchestrator.http.current import mv
from orchestrator.http.current import settings
from orchestrator.http.schemas import DB_MAX_INT
from orchestrator.http.schemas import METADATA_KEY

WITH_COUNT_SINCE = "3.45"   # with_count=true adds the total count
LIKE_SINCE = "3.34"         # key~=value is a substring match
STRICT_FILTERS_SINCE = "3.31"  # filters a caller may not use are refused, not dropped
PAGING_KEYS = {"limit", "marker", "offset", "sort", "sort_key", "sort_dir", "with_count",
               "all_tenants"}


def parse_bool(name: str, value: str) -> bool:
    """A boolean query parameter. :raises InvalidInput: naming the parameter."""
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes", "y", "on"):
        return True
    if v in ("0", "false", "f", "no", "n", "off"):
        return False
    raise errors.InvalidInput(f"Invalid input received: {name} must be a boolean, got "
                              f"'{value}'.")


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
    if "with_count" in args and mv().matches(WITH_COUNT_SINCE):
        with_count = parse_bool("with_count", args["with_count"])
    out["with_count"] = with_count
    invalid = []
    for key, value in args.items():
        if key in PAGING_KEYS:
            continue
        like = key.endswith("~") and mv().matches(LIKE_SINCE)
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
    if invalid and mv().matches(STRICT_FILTERS_SINCE):
        raise errors.InvalidInput(f"Invalid input received: Invalid filters "
                                  f"{', '.join(sorted(invalid))} are found in query options.")
    # Below 3.31 Cinder silently drops the filters a non-admin may not use.
    return out


def parse_metadata_filter(text: str) -> dict[str, str]:
    """``metadata={"k": "v"}`` as JSON or as the Python dict repr cinderclient sends.

    :raises InvalidInput:
    """
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
    """``sort=k:dir,...`` or the legacy ``sort_key``/``sort_dir``. :raises InvalidInput:"""
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
