"""Sorted keyset paging shared by every list endpoint (marker = last id seen)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Select
from sqlalchemy import String
from sqlalchemy import and_
from sqlalchemy import cast
from sqlalchemy import false
from sqlalchemy import or_


def keyset(query: Select, model, sort: list[tuple[str, str]], marker_row, *,
           limit: int | None, offset: int | None) -> Select:
    """Order by ``sort`` (+ id), start after ``marker_row``, apply offset and limit.

    NULLs sort as the smallest value, in both directions and on every database.
    """
    keys = list(sort)
    if not any(k == "id" for k, _ in keys):
        keys.append(("id", keys[-1][1] if keys else "desc"))
    order = []
    for key, direction in keys:
        col = getattr(model, key)
        if direction == "asc":
            order.extend([col.is_not(None), col.asc()])
        else:
            order.extend([col.is_(None), col.desc()])
    query = query.order_by(*order)
    if marker_row is not None:
        clauses = []
        for i, (key, direction) in enumerate(keys):
            col = getattr(model, key)
            value = getattr(marker_row, key)
            equal = [_eq(getattr(model, k), getattr(marker_row, k)) for k, _ in keys[:i]]
            clauses.append(and_(*equal, _after(col, value, direction)))
        query = query.where(or_(*clauses))
    if offset:
        query = query.offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return query


def _eq(col, value):
    return col.is_(None) if value is None else col == value


def _after(col, value, direction):
    if direction == "asc":
        # NULL is the smallest: after NULL comes every non-NULL value.
        return col.is_not(None) if value is None else col > value
    if value is None:
        return false()  # nothing sorts after NULL in descending order
    return or_(col < value, col.is_(None))


def list_rows(session, model, *, scope_project: str | None, filters: dict | None,
              like_filters: dict | None, sort: list[tuple[str, str]] | None,
              sort_keys: set[str], marker: str | None, limit: int | None,
              offset: int | None, with_count: bool):
    """Rows of ``model`` in scope, filtered, sorted and paged; the count only when asked.

    ``scope_project`` None means every project (admin with all_tenants).
    Unknown filter columns, and values a column cannot hold, match nothing
    (Cinder's admin behaviour). ``filters["metadata"]``, a dict, keeps rows
    whose metadata holds every given key with the given value.

    :raises MarkerNotFound, InvalidInput:
    """
    from sqlalchemy import func
    from sqlalchemy import select

    from orchestrator import errors

    sort = sort or [("created_at", "desc"), ("id", "desc")]
    for key, _ in sort:
        if key not in sort_keys:
            raise errors.InvalidInput(f"Invalid input received: Invalid sort key {key}.")
    base = select(model).where(model.deleted.is_(False))
    if scope_project is not None:
        base = base.where(model.project_id == scope_project)
    columns = model.__table__.c
    nothing = [], (0 if with_count else None)
    for key, value in (filters or {}).items():
        if key == "metadata" and isinstance(value, dict):
            base = base.where(*_metadata_clauses(model, value))
            continue
        if key not in columns or key == "metadata":
            return nothing
        try:
            base = base.where(getattr(model, key) == _coerce(columns[key], value))
        except _NoMatch:
            return nothing
    for key, value in (like_filters or {}).items():
        if key not in columns or key == "metadata":
            return nothing
        col = getattr(model, key)
        if not isinstance(columns[key].type, String):
            col = cast(col, String)
        base = base.where(col.contains(value, autoescape=True))
    count = None
    if with_count:
        count = session.scalar(select(func.count()).select_from(base.subquery()))
    marker_row = None
    if marker:
        marker_row = session.get(model, marker)
        if marker_row is None or marker_row.deleted or \
                (scope_project is not None and marker_row.project_id != scope_project):
            raise errors.MarkerNotFound(marker)
    query = keyset(base, model, sort, marker_row, limit=limit, offset=offset)
    return list(session.scalars(query)), count


def _metadata_clauses(model, wanted: dict) -> list:
    """Every (key, value) present: child rows for backups, the JSON column otherwise."""
    from sqlalchemy import exists
    from sqlalchemy import select

    clauses = []
    if hasattr(model, "metadata_items"):
        from orchestrator.models import BackupMetadata
        for key, value in wanted.items():
            clauses.append(exists(select(BackupMetadata.id).where(
                BackupMetadata.backup_id == model.id, BackupMetadata.deleted.is_(False),
                BackupMetadata.key == key, BackupMetadata.value == value)))
    else:
        for key, value in wanted.items():
            clauses.append(model.metadata_[key].as_string() == value)
    return clauses


class _NoMatch(Exception):
    """A filter value the column can never equal."""


def _coerce(column, value: str):
    """Query strings are text; compare integers, floats, booleans and times as such.

    :raises _NoMatch: the text is no value of the column's type.
    """
    from dateutil import parser as dateparser
    from sqlalchemy import Boolean
    from sqlalchemy import DateTime
    from sqlalchemy import Float
    from sqlalchemy import Integer

    try:
        if isinstance(column.type, Boolean):
            return value.strip().lower() in ("1", "true", "t", "yes", "y", "on")
        if isinstance(column.type, Integer):
            number = int(value)
            if not -2**63 <= number < 2**63:
                raise _NoMatch(value)
            return number
        if isinstance(column.type, Float):
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise _NoMatch(value)
            return number
        if isinstance(column.type, DateTime):
            parsed = dateparser.isoparse(value)
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
            return parsed
    except (ValueError, OverflowError):
        raise _NoMatch(value) from None
    return value
