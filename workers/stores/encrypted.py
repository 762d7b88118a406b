"""An object store that encrypts every object it stores (AES-256-GCM, whole objects).

``EncryptedStore(inner, keyring)`` wraps any store: ``put`` seals the object under
the keyring's current data key, ``get`` opens it with whichever of the keyring's
data keys its header names (shared blocks: one backup can reference packs written
under several keys, before and after a rotation). Listing and deleting pass through
(sizes are then ciphertext sizes). Every get is a whole object, so there is one
AEAD per object and no ranged read to secure (the data path reads whole objects).

Layout of a stored object (docs/format.md "Encrypted objects")::

    magic "VBEO" | version 1 (1 byte) | key id length n (1 byte) | key id (n bytes,
    ASCII) | nonce (12 bytes) | AES-256-GCM ciphertext of the plain object | tag (16)

The nonce is 96 random bits per object (never a counter, so writers on many hosts
need no coordination; at 2**32 objects per key the collision chance stays below
2**-32, and a rotation starts a new key). The associated data is the object's full
name, a zero byte and the header: an object copied or swapped to another name (of
another backup or project) or a header edited to name another key fails to
authenticate, as does any flipped byte.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import TYPE_CHECKING
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.ciphers import modes

from workers.datapath.errors import IntegrityError
from workers.datapath.names import validate_object_name

from .base import ObjectInfo
from .base import ObjectStore

if TYPE_CHECKING:
    from workers.datapath import ChunkedDriver

MAGIC = b"VBEO"
VERSION = 1
NONCE_LEN = 12
TAG_LEN = 16
# The cipher is fed at most this much at a time: one call over a whole pack runs at a
# seventh of the speed of the same bytes in pieces (and holds a pack-sized output).
_PIECE = 64 * 1024


class KeyringLike(Protocol):
    """What the store needs of a keyring (orchestrator.keys.Keyring is one)."""

    current_key_id: str
    data_keys: dict[str, bytes]
    identity_key_id: str
    identity_key: bytes


def encrypting(driver: ChunkedDriver, keyring: KeyringLike) -> ChunkedDriver:
    """A copy of ``driver`` (cheap: no per-job state) whose store encrypts under
    ``keyring`` and whose block digests are keyed with its identity key."""
    out = copy.copy(driver)
    out.store = EncryptedStore(driver.store, keyring)
    out.config = dataclasses.replace(driver.config, digest_key=keyring.identity_key,
                                     digest_key_id=keyring.identity_key_id)
    return out


def _header(key_id: str, nonce: bytes) -> bytes:
    kid = key_id.encode("ascii")
    return MAGIC + bytes((VERSION, len(kid))) + kid + nonce


def parse_header(raw: bytes, name: str) -> tuple[str, bytes, int]:
    """(key id, nonce, header length) of a stored object.

    :raise IntegrityError: if it is not an encrypted object of a known version.
    """
    if len(raw) < len(MAGIC) + 2 or raw[:len(MAGIC)] != MAGIC:
        raise IntegrityError(f"object {name!r} is not an encrypted object (damaged, or "
                             "written without encryption)")
    version, kid_len = raw[len(MAGIC)], raw[len(MAGIC) + 1]
    start = len(MAGIC) + 2
    end = start + kid_len + NONCE_LEN
    if version != VERSION or len(raw) < end + TAG_LEN:
        raise IntegrityError(f"object {name!r}: unknown encryption version {version} or "
                             "truncated")
    try:
        key_id = raw[start:start + kid_len].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"object {name!r}: damaged encryption header") from None
    return key_id, raw[start + kid_len:end], end


class EncryptedStore(ObjectStore):
    """``inner`` with every object sealed under ``keyring`` (see the module)."""

    kind = "encrypted"

    def __init__(self, inner: ObjectStore, keyring: KeyringLike) -> None:
        self.inner = inner
        self.keyring = keyring
        self._ciphers = {kid: algorithms.AES(key) for kid, key in keyring.data_keys.items()}
        if keyring.current_key_id not in self._ciphers:
            raise ValueError("the keyring's current data key is not among its keys")

    def seal_parts(self, name: str, parts: list[bytes | memoryview]) -> list[bytes]:
        """The stored form of the concatenation of ``parts`` under ``name``, in pieces
        (header, ciphertext, tag: the AES-GCM ciphertext-and-tag of the whole)."""
        nonce = os.urandom(NONCE_LEN)
        header = _header(self.keyring.current_key_id, nonce)
        encryptor = Cipher(self._ciphers[self.keyring.current_key_id],
                           modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(name.encode() + b"\0" + header)
        out = [header]
        for part in parts:
            view = memoryview(part)
            for i in range(0, len(view), _PIECE):
                out.append(encryptor.update(view[i:i + _PIECE]))
        out.append(encryptor.finalize())
        out.append(encryptor.tag)
        return out

    def open(self, name: str, raw: bytearray) -> bytearray:
        """The plain bytes of stored object ``raw`` under ``name``: ``raw`` itself,
        decrypted in place and without its header and tag.

        :raise IntegrityError: naming the object, if it does not authenticate or was
            written under a data key this keyring does not hold.
        """
        key_id, nonce, end = parse_header(raw, name)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise IntegrityError(f"object {name!r} was written under data key {key_id}, "
                                 "which this project's keyring does not hold (another "
                                 "project's object, or a key that is missing)")
        decryptor = Cipher(cipher, modes.GCM(nonce, bytes(raw[-TAG_LEN:]))).decryptor()
        decryptor.authenticate_additional_data(name.encode() + b"\0" + bytes(raw[:end]))
        # GCM is a stream cipher: every piece decrypts to as many bytes, in place (no
        # second pack-sized buffer to allocate and fault in).
        view = memoryview(raw)
        stop = len(raw) - TAG_LEN
        for i in range(end, stop, _PIECE):
            j = min(i + _PIECE, stop)
            if decryptor.update_into(view[i:j], view[i:]) != j - i:
                raise IntegrityError(f"object {name!r}: short decryption")
        del view
        try:
            decryptor.finalize()
        except InvalidTag:
            raise IntegrityError(f"object {name!r} does not authenticate (damaged, or moved "
                                 "from another name)") from None
        del raw[stop:]
        del raw[:end]
        return raw

    def put(self, name: str, data: bytes | memoryview) -> None:
        self.put_parts(name, [data])

    def put_parts(self, name: str, parts: list[bytes | memoryview]) -> None:
        validate_object_name(name)
        self.inner.put_parts(name, self.seal_parts(name, parts))

    def get(self, name: str) -> bytearray:
        return self.open(name, self.inner.get_buffer(name))

    def delete(self, name: str) -> None:
        self.inner.delete(name)

    def delete_objects(self, names: list[str]) -> None:
        self.inner.delete_objects(names)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def exists(self, name: str) -> bool:
        return self.inner.exists(name)

    def list_detailed(self, prefix: str = "") -> list[ObjectInfo]:
        return self.inner.list_detailed(prefix)

    def purge_incomplete(self, prefix: str) -> None:
        self.inner.purge_incomplete(prefix)

    def describe(self) -> str:
        return f"encrypted({self.inner.describe()})"
