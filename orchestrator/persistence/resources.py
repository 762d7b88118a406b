"""Compare-and-swap of a resource's status (backups, volumes, snapshots)."""
from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import bindparam
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key


@functools.cache
def _status_statement(model, with_reason: bool = False, previous: bool = False):
    """UPDATE a resource from one status to another, only if it is still in the first.

    Built once per shape (every job's failure path and every backup create run
    one), on the table: no ORM update machinery per call, so ``set_status``
    expires a loaded copy of the row itself.
    """
    table = model.__table__
    values = {"status": bindparam("b_status"), "updated_at": bindparam("b_now")}
    if with_reason:
        values["fail_reason"] = bindparam("b_reason")
    if previous:
        values["previous_status"] = bindparam("b_previous")
    return update(table).where(table.c.id == bindparam("b_id"),
                               table.c.status == bindparam("b_from")).values(**values)


def set_status(session: Session, model, ident: str, from_status: str, to_status: str, *,
               now: dt.datetime, reason: str | None = None, previous: str | None = None) -> int:
    """Compare-and-swap a resource's status; returns the rows changed (0 or 1)."""
    params = {"b_id": ident, "b_from": from_status, "b_status": to_status, "b_now": now,
              "b_reason": reason, "b_previous": previous}
    changed = session.execute(_status_statement(model, reason is not None, previous is not None),
                              params).rowcount
    loaded = session.identity_map.get(identity_key(model, ident)) if changed else None
    if loaded is not None:
        session.expire(loaded)
    return changed
