"""Sorted keyset paging shared by every list endpoint (marker = last id seen)."""
from __future__ import annotations

import datetime as dt
import functools

from dateutil import parser as dateparser
from sqlalchemy import Boolean
from sqlalchemy import DateTime
from sqlalchemy import Float
from sqlalchemy import Integer
from sqlalchemy import Select
from sqlalchemy import String
from sqlalchemy import and_
from sqlalchemy import bindparam
from sqlalchemy import cast
from sqlalchemy import exists
from sqlalchemy import false
from sqlalchemy import func
from sqlalchemy import or_
from sqlalchemy import select
from sqlalchemy import tuple_
from sqlalchemy.sql.elements import BindParameter

from orchestrator import errors
from orchestrator.models import BackupMetadata


def keyset(query: Select, model, sort: list[tuple[str, str]], marker_row, *,
           limit: int | None, offset: int | None) -> Select:
    """Order by ``sort`` (+ id), start after ``marker_row``, apply offset and limit.

    NULLs sort as the smallest value, in both directions and on every database.
    When every sort column is NOT NULL and all go the same way (the default
    ``created_at, id`` order), the order and the marker condition are plain
    column terms and a row-value comparison, so an index on those columns
    serves both and a page costs the same at any depth and any table size.
    """
    keys = _with_id(sort)
    cols = [getattr(model, key) for key, _ in keys]
    nullable = [model.__table__.c[key].nullable for key, _ in keys]
    directions = {d for _, d in keys}
    order = []
    for col, (_, direction), can_be_null in zip(cols, keys, nullable, strict=False):
        if direction == "asc":
            order.extend(([col.is_not(None)] if can_be_null else []) + [col.asc()])
        else:
            order.extend(([col.is_(None)] if can_be_null else []) + [col.desc()])
    query = query.order_by(*order)
    if marker_row is not None:
        values = [getattr(marker_row, key) for key, _ in keys]
        if not any(nullable) and len(directions) == 1:
            after = tuple_(*cols) > tuple_(*values) if directions == {"asc"} \
                else tuple_(*cols) < tuple_(*values)
            query = query.where(after)
        else:
            clauses = []
            for i, (col, (_, direction)) in enumerate(zip(cols, keys, strict=False)):
                equal = [_eq(cols[j], values[j]) for j in range(i)]
                clauses.append(and_(*equal, _after(col, values[i], direction)))
            query = query.where(or_(*clauses))
    if offset:
        query = query.offset(_in_text(offset))
    if limit is not None:
        query = query.limit(_in_text(limit))
    return query


def _in_text(value):
    """A LIMIT or OFFSET written into the SQL text when the statement runs.

    As a parameter, PostgreSQL's generic plan for the prepared statement reckons
    on a tenth of the table's rows, which on a big table looks far dearer than a
    custom plan: every request would be planned anew.
    """
    if isinstance(value, BindParameter):  # a statement built once: the value comes later
        return bindparam(value.key, type_=Integer, literal_execute=True)
    return bindparam(None, int(value), type_=Integer, literal_execute=True)


def _with_id(sort) -> list[tuple[str, str]]:
    """The sort, ending with id (in the last key's direction) to make the order total."""
    keys = list(sort)
    if not any(k == "id" for k, _ in keys):
        keys.append(("id", keys[-1][1] if keys else "desc"))
    return keys


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
              offset: int | None, with_count: bool, extra_columns: tuple = (),
              as_rows: bool = False):
    """Rows of ``model`` in scope, filtered, sorted and paged; the count only when asked.

    ``as_rows`` returns plain Core rows (the table's columns plus
    ``extra_columns``) instead of ORM objects: no identity map and no
    relationship loading, for the read paths that only render JSON.

    ``scope_project`` None means every project (admin with all_tenants).
    Unknown filter columns, and values a column cannot hold, match nothing
    (Cinder's admin behaviour). ``filters["metadata"]``, a dict, keeps rows
    whose metadata holds every given key with the given value.

    :raises MarkerNotFound, InvalidInput:
    """
    sort = sort or [("created_at", "desc"), ("id", "desc")]
    for key, _ in sort:
        if key not in sort_keys:
            raise errors.InvalidInput(f"Invalid input received: Invalid sort key {key}.")
    columns = model.__table__.c
    # The dashboard's page (no filter, no count, NOT NULL sort keys): a statement built
    # once, only its parameters change.
    cacheable = as_rows and not filters and not like_filters and not offset and \
        not with_count and limit is not None and not any(columns[key].nullable for key, _ in sort)
    count = None
    if not cacheable:
        base = (select(*model.__table__.c, *extra_columns) if as_rows else select(model)).where(
            model.deleted.is_(False))
        if scope_project is not None:
            base = base.where(model.project_id == scope_project)
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
        if with_count:
            count = session.scalar(select(func.count()).select_from(base.subquery()))
    marker_row = None
    if marker:
        marker_row = session.execute(select(model.__table__).where(model.id == marker)).first()
        if marker_row is None or marker_row.deleted or \
                (scope_project is not None and marker_row.project_id != scope_project):
            raise errors.MarkerNotFound(marker)
    if cacheable:
        query = _page_statement(model, scope_project is not None, tuple(sort),
                                marker_row is not None, extra_columns)
        params = {"b_project": scope_project, "b_limit": limit}
        if marker_row is not None:
            params.update({f"b_marker_{key}": getattr(marker_row, key)
                           for key, _ in _with_id(sort)})
        return session.execute(query, params).all(), count
    query = keyset(base, model, sort, marker_row, limit=limit, offset=offset)
    if as_rows:
        return session.execute(query).all(), count
    return list(session.scalars(query)), count


class _BoundMarker:
    """A marker row whose values are bound parameters (typed as its columns), for
    statements built once."""

    def __init__(self, model):
        self._columns = model.__table__.c

    def __getattr__(self, key: str):
        return bindparam(f"b_marker_{key}", type_=self._columns[key].type)


@functools.lru_cache(maxsize=256)
def _page_statement(model, scoped: bool, sort: tuple, after_marker: bool, extra_columns: tuple):
    """An unfiltered page of rows in one sort order (NOT NULL sort columns only), built once.

    Project and marker values are bound parameters: a request pays neither for
    building the statement nor for its cache key; the limit is written into the SQL
    text at execution (see _in_text).
    """
    query = select(*model.__table__.c, *extra_columns).where(model.deleted.is_(False))
    if scoped:
        query = query.where(model.project_id == bindparam("b_project"))
    return keyset(query, model, list(sort), _BoundMarker(model) if after_marker else None,
                  limit=bindparam("b_limit"), offset=None)


def _metadata_clauses(model, wanted: dict) -> list:
    """Every (key, value) present: child rows for backups, the JSON column otherwise."""
    clauses = []
    if hasattr(model, "metadata_items"):
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
                parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
            return parsed
    except (ValueError, OverflowError):
        raise _NoMatch(value) from None
    return value
