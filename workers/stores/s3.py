"""An object store in one S3 bucket (boto3; AWS or any S3-compatible endpoint).

Object names are the keys as they are. An object larger than
``multipart_threshold`` is written as a multipart upload of ``multipart_part_size``
parts (S3 takes at most 5 GB in one PUT, and parts of at least 5 MiB but the
last); a failed upload is aborted, so no invisible parts are left to pay for.
Deleting many objects goes in batches of 1000 keys (DeleteObjects). botocore retries what it can
(``standard`` mode); what still fails is sorted into not found, transient
(throttling, 5xx, timeouts, unreachable endpoint) and permanent (everything
else, e.g. a missing bucket or a refused signature).
"""
from __future__ import annotations

from typing import Any

from workers.datapath.errors import NotFound
from workers.datapath.errors import PermanentStoreError
from workers.datapath.errors import StoreError
from workers.datapath.errors import TransientStoreError
from workers.datapath.names import validate_object_name
from workers.datapath.names import validate_prefix_arg

from .base import ObjectInfo
from .base import ObjectStore

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "RequestTimeout", "InternalError",
                              "ServiceUnavailable", "RequestTimeTooSkewed"})
MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB          # S3's smallest part (but the last)
DELETE_BATCH = 1000              # S3's most keys in one DeleteObjects


class S3Store(ObjectStore):
    """Objects are keys in one S3 bucket, reached with path-style addressing."""

    kind = "s3"

    def __init__(self, *, endpoint_url: str | None = None, bucket: str,
                 access_key: str | None = None, secret_key: str | None = None,
                 region: str = "us-east-1", max_connections: int = 16, retries: int = 4,
                 connect_timeout: float = 10, read_timeout: float = 60,
                 create_bucket: bool = False, multipart_threshold: int = 64 * MiB,
                 multipart_part_size: int = 16 * MiB) -> None:
        """:raise PermanentStoreError: without a bucket; StoreError if creating it fails.
        :raise ValueError: if the part size is below S3's 5 MiB or the threshold below it.
        """
        import boto3  # only a deployment that uses S3 pays for importing boto3
        from botocore.config import Config

        if not bucket:
            raise PermanentStoreError("s3 store needs a bucket")
        if multipart_part_size < MIN_PART_SIZE or multipart_threshold < multipart_part_size:
            raise ValueError("multipart_part_size must be >= 5 MiB and "
                             "multipart_threshold >= multipart_part_size")
        self.multipart_threshold = int(multipart_threshold)
        self.multipart_part_size = int(multipart_part_size)
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        config = Config(region_name=region, max_pool_connections=max_connections,
                        retries={"max_attempts": retries, "mode": "standard"},
                        connect_timeout=connect_timeout, read_timeout=read_timeout,
                        s3={"addressing_style": "path"})
        # An empty key is no key: boto3's own chain (environment, profile, instance role)
        # finds the credentials, instead of signing with "".
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None, region_name=region, config=config)
        if create_bucket:
            try:
                self._client.create_bucket(Bucket=bucket)
            except self._client.exceptions.BucketAlreadyOwnedByYou:
                pass
            except Exception as e:
                raise self._store_error(e, bucket) from e

    def describe(self) -> str:
        """``s3:``, the endpoint and the bucket (never the keys)."""
        return f"s3:{self.endpoint_url or 'aws'}/{self.bucket}"

    def _store_error(self, error: Exception, name: str) -> StoreError:
        """The StoreError of whatever boto3 raised."""
        # botocore, like boto3 above, is imported only by a deployment that uses S3.
        from botocore.exceptions import BotoCoreError
        from botocore.exceptions import ClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ConnectTimeoutError
        from botocore.exceptions import EndpointConnectionError
        from botocore.exceptions import ReadTimeoutError
        if isinstance(error, StoreError):
            return error
        if isinstance(error, ClientError):
            details: dict[str, Any] = error.response.get("Error", {})
            code = str(details.get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
            message = (f"s3 error on {name!r} in {self.describe()}: "
                       f"{code} {details.get('Message', '')}").strip()
            if code in _NOT_FOUND_CODES:
                return NotFound(message, name=name)
            if status >= 500 or code in _TRANSIENT_CODES:
                return TransientStoreError(message, name=name)
            return PermanentStoreError(message, name=name)
        if isinstance(error, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                              BotoConnectionError)):
            return TransientStoreError(f"s3 connection error on {name!r}: {error}", name=name)
        if isinstance(error, BotoCoreError):
            return PermanentStoreError(f"s3 client error on {name!r}: {error}", name=name)
        return PermanentStoreError(f"s3 error on {name!r}: {error!r}", name=name)

    def put(self, name: str, data: bytes | memoryview) -> None:
        """PUT the object, or upload it in parts above the threshold (both atomic: the
        object appears whole when the upload completes)."""
        validate_object_name(name)
        if len(data) > self.multipart_threshold:
            self._put_multipart(name, memoryview(data))
            return
        try:
            self._client.put_object(Bucket=self.bucket, Key=name, Body=bytes(data))
        except Exception as e:
            raise self._store_error(e, name) from e

    def _put_multipart(self, name: str, view: memoryview) -> None:
        """A multipart upload of ``view``; aborted if any step fails."""
        try:
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=name)["UploadId"]
        except Exception as e:
            raise self._store_error(e, name) from e
        try:
            parts = []
            step = self.multipart_part_size
            for number, start in enumerate(range(0, len(view), step), start=1):
                response = self._client.upload_part(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number,
                    Body=bytes(view[start:start + step]))
                parts.append({"PartNumber": number, "ETag": response["ETag"]})
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id,
                MultipartUpload={"Parts": parts})
        except Exception as e:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=name,
                                                    UploadId=upload_id)
            except Exception:
                pass        # the original error is the one to report
            raise self._store_error(e, name) from e

    def incomplete_uploads(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix`` with a multipart upload that was neither completed nor
        aborted (tests and operators look for leftovers with it)."""
        validate_prefix_arg(prefix)
        try:
            response = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        except Exception as e:
            raise self._store_error(e, prefix) from e
        return sorted(u["Key"] for u in response.get("Uploads", ()))

    def get(self, name: str) -> bytes:
        """GET the object; NotFound if there is none."""
        validate_object_name(name)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            body = response["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as e:
            raise self._store_error(e, name) from e

    def exists(self, name: str) -> bool:
        """HEAD the object."""
        validate_object_name(name)
        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
            return True
        except Exception as e:
            error = self._store_error(e, name)
            if isinstance(error, NotFound):
                return False
            raise error from e

    def delete(self, name: str) -> None:
        """DELETE the object; a missing one is not an error."""
        validate_object_name(name)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except Exception as e:
            error = self._store_error(e, name)
            if isinstance(error, NotFound):
                return
            raise error from e

    def delete_objects(self, names: list[str]) -> None:
        """DeleteObjects in batches of 1000 keys; missing keys are not an error.

        :raise StoreError: if a batch fails or the store refuses some key.
        """
        for name in names:
            validate_object_name(name)
        for start in range(0, len(names), DELETE_BATCH):
            batch = names[start:start + DELETE_BATCH]
            try:
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": n} for n in batch], "Quiet": True})
            except Exception as e:
                raise self._store_error(e, batch[0]) from e
            errors = [e for e in response.get("Errors", ())
                      if e.get("Code") not in _NOT_FOUND_CODES]
            if errors:
                first = errors[0]
                message = (f"s3 error deleting {first.get('Key')!r} in {self.describe()}: "
                           f"{first.get('Code')} {first.get('Message', '')}")
                if first.get("Code") in _TRANSIENT_CODES:
                    raise TransientStoreError(message, name=first.get("Key"))
                raise PermanentStoreError(message, name=first.get("Key"))

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix``, every page of them."""
        return [info.name for info in self.list_detailed(prefix)]

    def list_detailed(self, prefix: str = "") -> list[ObjectInfo]:
        """Sorted (key, size, last modified) of the keys that start with ``prefix``."""
        validate_prefix_arg(prefix)
        found: list[ObjectInfo] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend(ObjectInfo(o["Key"], int(o["Size"]), o["LastModified"].timestamp())
                             for o in page.get("Contents", ()))
        except Exception as e:
            raise self._store_error(e, prefix) from e
        found.sort()
        return found
