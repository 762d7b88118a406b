"""Quota rows: the statements every create runs, built once."""
from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import bindparam
from sqlalchemy import literal
from sqlalchemy import select
from sqlalchemy import union_all
from sqlalchemy import update
from sqlalchemy.orm import Session

from orchestrator.models import Quota
from orchestrator.models import QuotaClass
from orchestrator.models import QuotaUsage

MAX_USAGE = 2**31 - 1


@functools.cache
def _limits_statement():
    defaults = select(QuotaClass.resource, QuotaClass.hard_limit, literal(0).label("rank")).where(
        QuotaClass.class_name == "default")
    own = select(Quota.resource, Quota.hard_limit, literal(1).label("rank")).where(
        Quota.project_id == bindparam("project_id"))
    return union_all(defaults, own)


def limit_rows(session: Session, project_id: str) -> list[tuple[str, int]]:
    """(resource, hard limit) of the default class, then of the project (one query)."""
    rows = session.execute(_limits_statement(), {"project_id": project_id})
    return [(resource, limit) for resource, limit, _rank in sorted(rows, key=lambda r: r[2])]


@functools.cache
def _charge_statement(limited: bool):
    """UPDATE usage by a positive delta only while it stays within the limit."""
    t = QuotaUsage.__table__
    total = t.c.in_use + t.c.reserved + bindparam("delta")
    cond = [t.c.project_id == bindparam("b_project"), t.c.resource == bindparam("b_resource"),
            total <= MAX_USAGE]
    if limited:
        cond.append(total <= bindparam("limit"))
    return update(t).where(*cond).values(in_use=t.c.in_use + bindparam("delta"),
                                         updated_at=bindparam("now"))


@functools.cache
def _consumed_statement():
    t = QuotaUsage.__table__
    return select(t.c.in_use + t.c.reserved).where(t.c.project_id == bindparam("b_project"),
                                                   t.c.resource == bindparam("b_resource"))


def add_usage(session: Session, project_id: str, resource: str, delta: int, *, limit: int,
              now: dt.datetime) -> bool:
    """Add ``delta`` to in_use unless that passes ``limit`` (-1: none); False if refused
    or if the project has no usage row for the resource yet."""
    params = {"b_project": project_id, "b_resource": resource, "delta": delta,
              "limit": limit, "now": now}
    return session.execute(_charge_statement(limit >= 0), params).rowcount == 1


def consumed(session: Session, project_id: str, resource: str) -> int | None:
    """in_use + reserved of a project's resource (None: no usage row yet)."""
    return session.execute(_consumed_statement(),
                           {"b_project": project_id, "b_resource": resource}).scalar()
