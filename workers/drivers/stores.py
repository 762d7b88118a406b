"""Object stores behind one small interface: a POSIX directory and S3.

Names are ``/``-separated, validated by :mod:`.names`; ``list(prefix)`` is a
plain string-prefix match, as in S3, and returns sorted names.
"""
import errno
import os
import uuid

from .errors import DataPathError
from .errors import NotFound
from .errors import PermanentStoreError
from .errors import StoreError
from .errors import TransientStoreError
from .names import validate_object_name
from .names import validate_prefix_arg

__all__ = ["ObjectStore", "PosixStore", "S3Store", "make_store"]


class ObjectStore:
    """Interface of a flat object store. Implementations must be thread-safe."""

    kind = "abstract"

    def put(self, name, data):
        """Store ``data`` (bytes-like) under ``name`` atomically (all or nothing)."""
        raise NotImplementedError

    def get(self, name):
        """Return the bytes of ``name``; raise NotFound if it does not exist."""
        raise NotImplementedError

    def delete(self, name):
        """Remove ``name``; a missing object is not an error."""
        raise NotImplementedError

    def list(self, prefix=""):
        """Sorted names that start with ``prefix``."""
        raise NotImplementedError

    def exists(self, name):
        raise NotImplementedError

    def purge_incomplete(self, prefix):
        """Remove leftovers of puts that never completed (a writer killed mid-put)
        under ``prefix``. Only call it when no writer can still be working there."""

    def describe(self):
        """Short description for logs (no secrets)."""
        return self.kind


# --------------------------------------------------------------------------- POSIX

_TMP_MARK = "~tmp~"   # '~' is not a valid name character: temporaries never list


class PosixStore(ObjectStore):
    """Objects are files below ``root``; ``a/b/c`` is ``root/a/b/c``.

    put() writes a temporary file in the target directory, fsyncs it, renames
    it over the final name and fsyncs the directory, so a reader sees either
    nothing or the whole object, also after a crash.
    """

    kind = "posix"

    def __init__(self, path, *, fsync=True, create=True):
        if not path:
            raise PermanentStoreError("posix store needs a path")
        self.root = os.path.abspath(path)
        self.fsync = fsync
        if create:
            os.makedirs(self.root, exist_ok=True)
        if not os.path.isdir(self.root):
            raise PermanentStoreError(f"posix store root {self.root!r} is not a directory")

    def describe(self):
        return f"posix:{self.root}"

    def _path(self, name):
        validate_object_name(name)
        return os.path.join(self.root, name)

    @staticmethod
    def _fsync_dir(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _makedirs(self, d):
        """Create d (and parents), fsyncing the parent of each created directory."""
        if os.path.isdir(d):
            return
        parent = os.path.dirname(d)
        if parent != d and not os.path.isdir(parent):
            self._makedirs(parent)
        try:
            os.mkdir(d)
        except FileExistsError:
            return
        if self.fsync:
            self._fsync_dir(parent)

    def put(self, name, data):
        path = self._path(name)
        d = os.path.dirname(path)
        tmp = f"{path}.{_TMP_MARK}{uuid.uuid4().hex}"
        try:
            for attempt in range(5):
                self._makedirs(d)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    break
                except FileNotFoundError:
                    if attempt == 4:   # a concurrent delete keeps removing the directory
                        raise
            try:
                mv = memoryview(data)
                while mv:
                    n = os.write(fd, mv)
                    mv = mv[n:]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            if self.fsync:
                self._fsync_dir(d)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _oserror(e, name) from e

    def get(self, name):
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"object {name!r} not found in {self.describe()}", name=name) from None
        except IsADirectoryError:
            raise NotFound(f"object {name!r} is a directory in {self.describe()}", name=name) from None
        except OSError as e:
            raise _oserror(e, name) from e

    def exists(self, name):
        return os.path.isfile(self._path(name))

    def delete(self, name):
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            return
        except OSError as e:
            raise _oserror(e, name) from e
        self._prune_empty_dirs(os.path.dirname(path))

    def _prune_empty_dirs(self, d):
        """Best effort: remove directories left empty, from ``d`` up to the root."""
        while d != self.root and d.startswith(self.root + os.sep):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)

    def purge_incomplete(self, prefix):
        validate_prefix_arg(prefix)
        top = os.path.join(self.root, prefix.rstrip("/")) if prefix.endswith("/") else None
        if top is None or not os.path.isdir(top):
            return
        for dirpath, _dirs, files in os.walk(top, topdown=False):
            for fn in files:
                if _TMP_MARK in fn:
                    try:
                        os.unlink(os.path.join(dirpath, fn))
                    except FileNotFoundError:
                        pass
            self._prune_empty_dirs(dirpath)

    def list(self, prefix=""):
        validate_prefix_arg(prefix)
        # Walk from the deepest directory that the prefix fully names.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = os.path.join(self.root, base) if base else self.root
        out = []
        if not os.path.isdir(top):
            return out
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            # prune directories that cannot match
            dirnames[:] = [dn for dn in dirnames
                           if (rel + dn + "/").startswith(prefix) or prefix.startswith(rel + dn + "/")]
            for fn in filenames:
                if _TMP_MARK in fn:
                    continue
                full = rel + fn
                if full.startswith(prefix):
                    out.append(full)
        out.sort()
        return out


def _oserror(e, name):
    transient = {errno.EAGAIN, errno.EINTR, errno.EIO, errno.ETIMEDOUT, errno.ESTALE,
                 errno.ENOSPC, errno.EDQUOT, errno.EBUSY}
    cls = TransientStoreError if e.errno in transient else PermanentStoreError
    return cls(f"posix store error on {name!r}: {e}", name=name)


# --------------------------------------------------------------------------- S3

class S3Store(ObjectStore):
    """Objects are keys in one S3 bucket (boto3; any S3-compatible endpoint)."""

    kind = "s3"

    def __init__(self, *, endpoint_url=None, bucket, access_key=None, secret_key=None,
                 region="us-east-1", max_connections=16, retries=4, connect_timeout=10,
                 read_timeout=60, create_bucket=False):
        import boto3
        from botocore.config import Config

        if not bucket:
            raise PermanentStoreError("s3 store needs a bucket")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        cfg = Config(region_name=region, max_pool_connections=max_connections,
                     retries={"max_attempts": retries, "mode": "standard"},
                     connect_timeout=connect_timeout, read_timeout=read_timeout,
                     s3={"addressing_style": "path"})
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
            aws_secret_access_key=secret_key, region_name=region, config=cfg)
        if create_bucket:
            try:
                self._client.create_bucket(Bucket=bucket)
            except self._client.exceptions.BucketAlreadyOwnedByYou:
                pass
            except Exception as e:
                raise self._wrap(e, bucket) from e

    def describe(self):
        return f"s3:{self.endpoint_url or 'aws'}/{self.bucket}"

    def _wrap(self, e, name):
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError
        from botocore.exceptions import ConnectionError as BCConn
        from botocore.exceptions import ConnectTimeoutError
        from botocore.exceptions import EndpointConnectionError
        from botocore.exceptions import ReadTimeoutError
        if isinstance(e, StoreError):
            return e
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
            msg = f"s3 error on {name!r} in {self.describe()}: {code} {err.get('Message', '')}".strip()
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(msg, name=name)
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout",
                                         "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"):
                return TransientStoreError(msg, name=name)
            return PermanentStoreError(msg, name=name)
        if isinstance(e, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, BCConn)):
            return TransientStoreError(f"s3 connection error on {name!r}: {e}", name=name)
        if isinstance(e, BotoCoreError):
            return PermanentStoreError(f"s3 client error on {name!r}: {e}", name=name)
        return PermanentStoreError(f"s3 error on {name!r}: {e!r}", name=name)

    def put(self, name, data):
        validate_object_name(name)
        try:
            self._client.put_object(Bucket=self.bucket, Key=name, Body=bytes(data))
        except Exception as e:
            raise self._wrap(e, name) from e

    def get(self, name):
        validate_object_name(name)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=name)
            body = resp["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as e:
            raise self._wrap(e, name) from e

    def exists(self, name):
        validate_object_name(name)
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
            return True
        except Exception as e:
            err = self._wrap(e, name)
            if isinstance(err, NotFound):
                return False
            raise err from e

    def delete(self, name):
        validate_object_name(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except Exception as e:
            err = self._wrap(e, name)
            if isinstance(err, NotFound):
                return
            raise err from e

    def list(self, prefix=""):
        validate_prefix_arg(prefix)
        out = []
        try:
            pager = self._client.get_paginator("list_objects_v2")
            for page in pager.paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(o["Key"] for o in page.get("Contents", ()))
        except Exception as e:
            raise self._wrap(e, prefix) from e
        out.sort()
        return out


def make_store(kind, **options):
    """Build an object store: ``posix`` (path=...) or ``s3`` (endpoint_url, bucket,
    access_key, secret_key, region="us-east-1")."""
    if kind == "posix":
        return PosixStore(**options)
    if kind == "s3":
        return S3Store(**options)
    raise DataPathError(f"unknown object store kind {kind!r} (expected 'posix' or 's3')")
