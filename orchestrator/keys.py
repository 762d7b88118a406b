"""Envelope encryption: per-project keys wrapped by the operator's key encryption key.

Every project has

* **data keys** (AES-256): the current one encrypts every object of a new backup
  (workers/stores/encrypted.py); a rotation retires it and makes a new one, and
  retired keys stay in the keyring so every older object still decrypts (shared
  blocks: one backup can reference packs written under several keys);
* one **identity key**: keys the block digests (HMAC-SHA256) that decide what an
  incremental reuses, so equal content in two projects is neither detectable nor
  shared. It is never rotated, so incrementals work across data-key rotations.

Only *wrapped* keys are stored (table ``project_keys``; a copy in the store, the
project's key record, workers/keyrecords.py; an export record carries them too):
AES-256-GCM under the key encryption key (KEK), with the project, key id and
purpose as associated data, so a wrapped key cannot be moved to another project
or purpose. An import registers the keys it carries for the importing project
(:func:`rebound_rows`, :func:`register_imported`): the same key id may be a row of
several projects, each wrapped for its own. The KEK comes from a :class:`KekProvider`: ``ORCH_KEK``
(base64 of 32 bytes) or the file ``ORCH_KEK_FILE``; a KMS or Barbican provider
subclasses :class:`KekProvider` (see :class:`ExternalKekProvider`).
"""
from __future__ import annotations

import abc
import base64
import binascii
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchestrator.config import Settings
from orchestrator.models import ProjectKey
from orchestrator.models import new_id

KEY_LEN = 32
# The store's reserved prefix of the per-project key records (workers/keyrecords.py):
# no backup container may be it or lie under it, and the garbage collector never frees
# anything under it (docs/format.md, "Key records").
KEY_RECORD_ROOT = "_project_keys"
DATA, IDENTITY = "data", "identity"
_WRAP_VERSION = b"\x01"


class KeyError_(Exception):
    """A key cannot be had: no KEK, a wrong KEK, or a damaged wrapped key."""


class KekProvider(abc.ABC):
    """Where the key encryption key comes from. ``kek_id`` names it without revealing
    it (a digest of the key), so SQL records which KEK wrapped each key."""

    @abc.abstractmethod
    def kek(self) -> bytes:
        """The 32-byte KEK.

        :raise KeyError_: if it cannot be had.
        """

    @property
    def kek_id(self) -> str:
        return hashlib.sha256(b"volume-backup-kek-id\0" + self.kek()).hexdigest()[:32]

    def wrap(self, key: bytes, *, project_id: str, key_id: str, purpose: str) -> str:
        """``key`` sealed under the KEK (base64 text)."""
        nonce = os.urandom(12)
        sealed = AESGCM(self.kek()).encrypt(nonce, key, _aad(project_id, key_id, purpose))
        return base64.b64encode(_WRAP_VERSION + nonce + sealed).decode("ascii")

    def unwrap(self, wrapped: str, *, project_id: str, key_id: str, purpose: str) -> bytes:
        """The key ``wrapped`` holds.

        :raise KeyError_: if it was not wrapped by this KEK for this project, key id and
            purpose, or is damaged.
        """
        try:
            raw = base64.b64decode(wrapped, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise KeyError_(f"wrapped key {key_id} is not valid base64") from None
        if len(raw) < 1 + 12 + KEY_LEN + 16 or raw[:1] != _WRAP_VERSION:
            raise KeyError_(f"wrapped key {key_id} is malformed")
        try:
            key = AESGCM(self.kek()).decrypt(raw[1:13], raw[13:],
                                             _aad(project_id, key_id, purpose))
        except InvalidTag:
            raise KeyError_(f"wrapped key {key_id} of project {project_id} cannot be "
                            "unwrapped with this key encryption key") from None
        if len(key) != KEY_LEN:
            raise KeyError_(f"wrapped key {key_id} is malformed")
        return key


def _aad(project_id: str, key_id: str, purpose: str) -> bytes:
    return f"volume-backup-key\0{project_id}\0{key_id}\0{purpose}".encode()


def _decode_kek(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyError_(f"{where} is not base64") from None
    if len(key) != KEY_LEN:
        raise KeyError_(f"{where} must hold 32 bytes (base64), not {len(key)}")
    return key


class EnvKekProvider(KekProvider):
    """The KEK as base64 text (``ORCH_KEK``)."""

    def __init__(self, text: str) -> None:
        self._key = _decode_kek(text, "ORCH_KEK")

    def kek(self) -> bytes:
        return self._key


class FileKekProvider(KekProvider):
    """The KEK as base64 text in a file (``ORCH_KEK_FILE``), read once."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise KeyError_(f"cannot read the key encryption key file {path}: "
                            f"{e.strerror}") from None
        self._key = _decode_kek(text, f"key encryption key file {path}")

    def kek(self) -> bytes:
        return self._key


class ExternalKekProvider(KekProvider):
    """The place for a KMS or Barbican provider: keep the KEK in the service and
    override :meth:`wrap` and :meth:`unwrap` to call it (``kek`` then never leaves it,
    and ``kek_id`` should be the service's key reference)."""

    def __init__(self, reference: str) -> None:
        self.reference = reference

    def kek(self) -> bytes:
        raise KeyError_("an external key manager provider is not configured")

    @property
    def kek_id(self) -> str:
        return self.reference


def create_kek_file(path: str) -> bool:
    """Create a KEK file (mode 0600) if there is none; whether one was created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(os.urandom(KEY_LEN)).decode("ascii") + "\n")
    return True


def kek_provider(settings: Settings) -> KekProvider:
    """The configured KEK: ``ORCH_KEK`` if set, else the file ``ORCH_KEK_FILE``.

    :raise KeyError_: if there is none or it is malformed.
    """
    if settings.kek:
        return EnvKekProvider(settings.kek)
    return FileKekProvider(settings.kek_file)


@dataclass(frozen=True)
class Keyring:
    """A project's unwrapped keys, for one job (never stored, never logged)."""

    project_id: str
    current_key_id: str
    data_keys: dict[str, bytes]
    identity_key_id: str
    identity_key: bytes

    def __repr__(self) -> str:
        return f"Keyring({self.project_id!r}, current={self.current_key_id!r})"


def project_rows(session: Session, project_id: str) -> list[ProjectKey]:
    """Every wrapped key of ``project_id`` (oldest first)."""
    return list(session.scalars(select(ProjectKey).where(ProjectKey.project_id == project_id)
                                .order_by(ProjectKey.created_at, ProjectKey.key_id)))


def copied_row(row: ProjectKey, **changes) -> ProjectKey:
    """A new (unsaved) row with ``row``'s fields, ``changes`` applied."""
    fields = {"key_id": row.key_id, "project_id": row.project_id, "purpose": row.purpose,
              "wrapped": row.wrapped, "kek_id": row.kek_id, "created_at": row.created_at,
              "retired_at": row.retired_at}
    fields.update(changes)
    return ProjectKey(**fields)


def _new_row(provider: KekProvider, project_id: str, purpose: str,
             now: dt.datetime) -> ProjectKey:
    key_id = new_id()
    return ProjectKey(key_id=key_id, project_id=project_id, purpose=purpose,
                      wrapped=provider.wrap(os.urandom(KEY_LEN), project_id=project_id,
                                            key_id=key_id, purpose=purpose),
                      kek_id=provider.kek_id, created_at=now)


def ensure_keys(session: Session, provider: KekProvider, project_id: str,
                now: dt.datetime) -> list[ProjectKey]:
    """The project's wrapped keys, creating a current data key and the identity key
    where there are none (a concurrent creator wins cleanly: its keys are used)."""
    rows = project_rows(session, project_id)
    missing = [p for p in (DATA, IDENTITY)
               if not any(r.purpose == p and r.retired_at is None for r in rows)]
    if not missing:
        return rows
    made = [_new_row(provider, project_id, purpose, now) for purpose in missing]
    try:
        with session.begin_nested():
            session.add_all(made)
    except IntegrityError:            # another job made them first: use its keys
        return project_rows(session, project_id)
    return sorted(rows + made, key=lambda r: (r.created_at, r.key_id))


def keyring(provider: KekProvider, rows: list[ProjectKey],
            identity_key_id: str | None = None) -> Keyring:
    """The unwrapped keyring of these rows (one project's); its identity key is the
    current one, or ``identity_key_id`` (an imported backup keyed with another).

    :raise KeyError_: if a key cannot be unwrapped or the project has no current keys.
    """
    data: dict[str, bytes] = {}
    current = identity_id = None
    identity = b""
    for row in rows:
        key = provider.unwrap(row.wrapped, project_id=row.project_id, key_id=row.key_id,
                              purpose=row.purpose)
        if row.purpose == DATA:
            data[row.key_id] = key
            if row.retired_at is None:
                current = row.key_id
        elif row.purpose == IDENTITY and (row.key_id == identity_key_id if identity_key_id
                                          else row.retired_at is None):
            identity_id, identity = row.key_id, key
    if current is None or identity_id is None:
        raise KeyError_("the project has no current data or identity key")
    return Keyring(rows[0].project_id, current, data, identity_id, identity)


def rotate(session: Session, provider: KekProvider, project_id: str,
           now: dt.datetime) -> ProjectKey:
    """Retire the project's current data key and make a new one (for new backups; old
    objects keep their key, which stays in the keyring)."""
    ensure_keys(session, provider, project_id, now)
    session.execute(update(ProjectKey).where(
        ProjectKey.project_id == project_id, ProjectKey.purpose == DATA,
        ProjectKey.retired_at.is_(None)).values(retired_at=now))
    row = _new_row(provider, project_id, DATA, now)
    session.add(row)
    session.flush()
    return row


def rewrap(session: Session, old: KekProvider, new: KekProvider) -> int:
    """Re-wrap every stored key under ``new`` (data untouched); how many changed.

    :raise KeyError_: if a key wrapped by ``old`` cannot be unwrapped (nothing changes:
        the caller's transaction is rolled back).
    """
    changed = 0
    for row in session.scalars(select(ProjectKey).order_by(ProjectKey.key_id)):
        if row.kek_id == new.kek_id:
            continue
        key = old.unwrap(row.wrapped, project_id=row.project_id, key_id=row.key_id,
                         purpose=row.purpose)
        row.wrapped = new.wrap(key, project_id=row.project_id, key_id=row.key_id,
                               purpose=row.purpose)
        row.kek_id = new.kek_id
        changed += 1
    return changed


def export_rows(rows: list[ProjectKey]) -> list[dict]:
    """Wrapped keys as an export record carries them (nothing secret in the clear)."""
    return [{"key_id": r.key_id, "purpose": r.purpose, "wrapped": r.wrapped,
             "kek_id": r.kek_id, "retired": r.retired_at is not None} for r in rows]


def carried_rows(record: dict, now: dt.datetime) -> list[ProjectKey]:
    """The wrapped keys an export record carries, as (unsaved) rows.

    :raise KeyError_: if the record carries none or they are malformed.
    """
    carried = (record.get("encryption") or {}).get("keys") if isinstance(
        record.get("encryption"), dict) else None
    if not isinstance(carried, list) or not carried:
        raise KeyError_("the record of an encrypted backup carries no wrapped keys")
    rows = []
    for item in carried:
        if not isinstance(item, dict) or item.get("purpose") not in (DATA, IDENTITY) or \
                not all(isinstance(item.get(k), str) for k in ("key_id", "wrapped")):
            raise KeyError_("the record carries a malformed wrapped key")
        rows.append(ProjectKey(key_id=item["key_id"], project_id=str(record.get("project_id")),
                               purpose=item["purpose"], wrapped=item["wrapped"],
                               kek_id=str(item.get("kek_id") or ""), created_at=now,
                               retired_at=now if item.get("retired") else None))
    return rows


def check_carried(provider: KekProvider, record: dict) -> None:
    """That every wrapped key an encrypted backup's record carries unwraps here.

    :raise KeyError_: naming what is wrong.
    """
    rows = carried_rows(record, dt.datetime.now(dt.UTC).replace(tzinfo=None))
    for row in rows:
        provider.unwrap(row.wrapped, project_id=row.project_id, key_id=row.key_id,
                        purpose=row.purpose)
    # The backup's data key is among them (current or not: an exported import's keys
    # may all be extra ones of the exporting project).
    reading_keyring(provider, rows, str(record.get("encryption_key_id")))


def rebound_rows(provider: KekProvider, rows: list[ProjectKey], project_id: str
                 ) -> list[dict]:
    """Carried keys re-wrapped for ``project_id`` (the wrapping binds the project), as
    :func:`export_rows` gives them: what an import registers for the importing project.

    :raise KeyError_: if a carried key cannot be unwrapped.
    """
    out = []
    for carried in rows:
        key = provider.unwrap(carried.wrapped, project_id=carried.project_id,
                              key_id=carried.key_id, purpose=carried.purpose)
        out.append({"key_id": carried.key_id, "purpose": carried.purpose,
                    "wrapped": provider.wrap(key, project_id=project_id,
                                             key_id=carried.key_id, purpose=carried.purpose),
                    "kek_id": provider.kek_id, "retired": carried.retired_at is not None})
    return out


def imported_rows(held: list[ProjectKey], rebound: list[dict], project_id: str, *,
                  source_project_id: str | None, now: dt.datetime) -> list[ProjectKey]:
    """The rows an import adds to ``project_id``'s keyring (``held``): the carried keys
    (:func:`rebound_rows`) it does not hold yet.

    They are extra keys, never current — unless the record is the project's own (its
    keys brought back after a database loss or into another deployment) and the project
    has no current key of that purpose: a project's new backups keep using its own data
    and identity keys, so an imported backup never makes another project's digests
    comparable with its own.
    """
    ids = {r.key_id for r in held}
    current = {r.purpose for r in held if r.retired_at is None}
    added = []
    for item in rebound:
        if item["key_id"] in ids:
            continue
        keep_current = (source_project_id == project_id and not item["retired"]
                        and item["purpose"] not in current)
        if keep_current:
            current.add(item["purpose"])
        ids.add(item["key_id"])
        added.append(ProjectKey(key_id=item["key_id"], project_id=project_id,
                                purpose=item["purpose"], wrapped=item["wrapped"],
                                kek_id=item["kek_id"], created_at=now,
                                retired_at=None if keep_current else now))
    return added


def register_imported(session: Session, project_id: str, rebound: list[dict], *,
                      source_project_id: str | None, now: dt.datetime) -> list[str]:
    """Add the keys an import carried to ``project_id``'s keyring (see
    :func:`imported_rows`); the key ids added."""
    added = []
    for row in imported_rows(project_rows(session, project_id), rebound, project_id,
                             source_project_id=source_project_id, now=now):
        try:
            with session.begin_nested():     # a concurrent import of the same keys
                session.add(row)
        except IntegrityError:
            if row.retired_at is not None:
                continue                     # it holds the key already
            try:
                with session.begin_nested():     # another current key came first
                    session.add(copied_row(row, retired_at=now))
            except IntegrityError:
                continue                         # it holds the key already
        added.append(row.key_id)
    return added


def reading_keyring(provider: KekProvider, rows: list[ProjectKey], data_key_id: str,
                    identity_key_id: str | None = None) -> Keyring:
    """The keyring that reads a backup sealed under ``data_key_id`` (one of ``rows``, a
    project's, current or not) with digests keyed by ``identity_key_id`` (default: the
    project's current identity key, else its newest one). Nothing needs to be current:
    a project that only holds imported keys reads its imported backups.

    :raise KeyError_: if the project does not hold those keys or one cannot be unwrapped.
    """
    if not any(r.key_id == data_key_id and r.purpose == DATA for r in rows):
        raise KeyError_(f"project {rows[0].project_id if rows else '?'} holds no data key "
                        f"{data_key_id}")
    identities = [r for r in rows if r.purpose == IDENTITY]
    if identity_key_id:
        chosen = [r for r in identities if r.key_id == identity_key_id]
    else:
        chosen = [r for r in identities if r.retired_at is None] or identities[-1:]
    if not chosen:
        raise KeyError_(f"project {rows[0].project_id} holds no identity key "
                        f"{identity_key_id or ''}".rstrip())
    data = {r.key_id: provider.unwrap(r.wrapped, project_id=r.project_id, key_id=r.key_id,
                                      purpose=r.purpose) for r in rows if r.purpose == DATA}
    identity = chosen[0]
    return Keyring(rows[0].project_id, data_key_id, data, identity.key_id,
                   provider.unwrap(identity.wrapped, project_id=identity.project_id,
                                   key_id=identity.key_id, purpose=IDENTITY))
