"""marshmallow schemas: request bodies (unknown keys refused) and, for the OpenAPI
document, the shapes of the replies render.py builds."""
from __future__ import annotations

import re
import uuid

from marshmallow import EXCLUDE
from marshmallow import INCLUDE
from marshmallow import RAISE
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import validate

from orchestrator import api
from orchestrator.states import BackupStatus

METADATA_KEY = api.METADATA_KEY_RE
TRUE = {"true", "1", "yes", "on", "t", "y"}
FALSE = {"false", "0", "no", "off", "f", "n"}


class LenientBool(fields.Field):
    """JSON booleans or the strings true/false/1/0/yes/no/on/off/t/f/y/n in any case."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            v = value.strip().lower()
            if v in TRUE:
                return True
            if v in FALSE:
                return False
        raise ValidationError(f"{value!r} is not a valid boolean.")


class WholeNumber(fields.Field):
    """An integer given as a JSON integer or a string of digits (never a bool or a float)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
            return int(value.strip())
        raise ValidationError(f"{value!r} is not an integer.")


DB_MAX_INT = 2**31 - 1


class UUIDString(fields.String):
    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise ValidationError(f"{text!r} is not a valid UUID.") from None


class Name(fields.String):
    """Strings up to 255 characters, stripped; null allowed."""

    def __init__(self, **kwargs):
        super().__init__(allow_none=True, validate=validate.Length(max=255), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs).strip()


class FullMatch(validate.Regexp):
    """A pattern the whole value must match (``re.match`` with ``$`` lets a trailing
    newline through)."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class Metadata(fields.Dict):
    """Cinder's metadata limits: keys of [a-zA-Z0-9-_:. /]{1,255}, values of at most 255
    characters, and (ours) at most api.METADATA_MAX_ITEMS items."""

    def __init__(self, **kwargs):
        super().__init__(keys=fields.String(validate=FullMatch(METADATA_KEY)),
                         values=fields.String(validate=validate.Length(max=api.NAME_MAX)),
                         validate=validate.Length(max=api.METADATA_MAX_ITEMS),
                         allow_none=True, **kwargs)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


class BackupCreateSchema(StrictSchema):
    volume_id = UUIDString(required=True)
    container = fields.String(allow_none=True, validate=validate.Length(max=255))
    name = Name()
    description = Name()
    incremental = LenientBool(allow_none=True)
    force = LenientBool(allow_none=True)
    snapshot_id = UUIDString(allow_none=True)
    metadata = Metadata()
    availability_zone = fields.String(allow_none=True, validate=validate.Length(max=255))


class BackupUpdateSchema(StrictSchema):
    name = Name()
    description = Name()
    metadata = Metadata()


class RestoreSchema(StrictSchema):
    volume_id = UUIDString(allow_none=True)
    name = Name()


class BackupRecordSchema(StrictSchema):
    backup_service = fields.String(required=True, validate=validate.Length(max=255))
    backup_url = fields.String(required=True, validate=validate.Length(min=1))


class ResetStatusSchema(StrictSchema):
    status = fields.String(required=True)


class VolumeCreateSchema(Schema):
    """Unknown keys are ignored below 3.53 and refused from 3.53."""

    class Meta:
        unknown = EXCLUDE

    size = WholeNumber(allow_none=True, validate=validate.Range(min=1, max=DB_MAX_INT))
    name = Name()
    description = Name()
    display_name = Name()
    display_description = Name()
    volume_type = fields.String(allow_none=True, validate=validate.Length(max=255))
    availability_zone = fields.String(allow_none=True, validate=validate.Length(max=255))
    metadata = Metadata()
    snapshot_id = UUIDString(allow_none=True)
    source_volid = UUIDString(allow_none=True)
    imageRef = fields.String(allow_none=True, validate=validate.Length(max=255))
    consistencygroup_id = fields.String(allow_none=True, validate=validate.Length(max=255))
    group_id = fields.String(allow_none=True, validate=validate.Length(max=255))
    backup_id = UUIDString(allow_none=True)
    multiattach = LenientBool(allow_none=True)


class SnapshotCreateSchema(StrictSchema):
    volume_id = UUIDString(required=True)
    name = Name()
    description = Name()
    display_name = Name()
    display_description = Name()
    force = LenientBool(allow_none=True)
    metadata = Metadata()


def _limit() -> WholeNumber:
    return WholeNumber(validate=validate.Range(min=-1, max=DB_MAX_INT))


class QuotaSetSchema(StrictSchema):
    """Limits: integers >= -1 (-1 = unlimited); `tenant_id` and `id` are ignored
    (cinderclient always sends tenant_id)."""

    backups = _limit()
    backup_gigabytes = _limit()
    volumes = _limit()
    gigabytes = _limit()
    snapshots = _limit()
    tenant_id = fields.Raw(allow_none=True)
    id = fields.Raw(allow_none=True)


class ServiceToggleSchema(StrictSchema):
    """PUT /os-services/enable|disable|disable-log-reason."""

    host = fields.String(required=True, validate=validate.Length(min=1, max=255))
    binary = fields.String(required=True, validate=validate.Length(min=1, max=255))
    disabled_reason = fields.String(allow_none=True, validate=validate.Length(max=255))


class BackupGCCreateSchema(StrictSchema):
    """POST /backup-gc: which store to collect (a host's; by default any live backup host
    of the zone) and how far (``full`` also sweeps the store's listing)."""

    scope = fields.String(validate=validate.OneOf(("full", "released")))
    host = fields.String(validate=validate.Length(min=1, max=255))
    availability_zone = fields.String(validate=validate.Length(min=1, max=255))


# ----------------------------------------------------------------------------- replies
# Documentation only: render.py builds these dicts; the OpenAPI document shows them, inside
# the envelope each route declares.


class ReplySchema(Schema):
    """A reply's shape: replies may carry more keys than it lists (clients ignore them)."""

    class Meta:
        unknown = INCLUDE


class EmptySchema(StrictSchema):
    """An empty object."""


class LinkSchema(ReplySchema):
    rel = fields.String(metadata={"description": "self, bookmark or next"})
    href = fields.String(metadata={"description": "absolute URL"})


class SummarySchema(ReplySchema):
    """What a summary listing shows of any resource; each resource's summary is a
    subclass, so the OpenAPI document names it (subclasses stay without a docstring:
    the document's components have none)."""

    id = fields.UUID()
    name = fields.String(allow_none=True)
    links = fields.List(fields.Nested(LinkSchema))


class BackupSummarySchema(SummarySchema):
    pass


class BackupProgressSchema(ReplySchema):
    """Live progress of the operation on a backup (an extension; clients ignore it)."""

    operation = fields.String(allow_none=True, metadata={
        "description": "the running job's operation (backup_create, backup_restore, "
                       "backup_verify); null when none runs: then the create's last report"})
    bytes_done = fields.Integer(metadata={"description": "bytes of the volume covered, "
                                                         "holes and zero ranges included"})
    bytes_total = fields.Integer()
    bytes_skipped = fields.Integer(allow_none=True, metadata={
        "description": "of bytes_done, holes and zero ranges neither read nor written"})
    percent = fields.Float(allow_none=True)
    rate_bytes_per_s = fields.Integer(allow_none=True, metadata={
        "description": "of a running job: bytes read or written per second (skipped bytes "
                       "not counted); of the create's last report: bytes covered per second"})
    updated_at = fields.String(allow_none=True, metadata={
        "description": "when the running job last reported (UTC); an old one means a "
                       "stalled job"})
    stored_bytes = fields.Integer(allow_none=True)


class BackupDetailSchema(ReplySchema):
    id = fields.UUID()
    status = fields.String(metadata={"enum": [s.value for s in BackupStatus
                                              if s is not BackupStatus.DELETED]})
    size = fields.Integer()
    object_count = fields.Integer()
    availability_zone = fields.String(allow_none=True)
    container = fields.String(allow_none=True)
    created_at = fields.String(metadata={"description": "naive UTC, e.g. "
                                                        "2023-06-23T11:56:08.691468"})
    updated_at = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    fail_reason = fields.String(allow_none=True)
    volume_id = fields.UUID()
    links = fields.List(fields.Nested(LinkSchema))
    is_incremental = fields.Boolean()
    has_dependent_backups = fields.Boolean()
    snapshot_id = fields.UUID(allow_none=True)
    data_timestamp = fields.String()
    metadata = fields.Dict(keys=fields.String(), values=fields.String(),
                           metadata={"description": "microversion 3.43+"})
    project_id = fields.String(data_key="os-backup-project-attr:project_id",
                               metadata={"description": "3.18+, admin only"})
    user_id = fields.String(metadata={"description": "3.56+, admin only"})
    encryption_key_id = fields.String(metadata={"description": "3.64+, only when set"})
    policy_id = fields.String(allow_none=True, metadata={
        "description": "extension: the backup policy that created it"})
    kept_by = fields.List(fields.String(), allow_none=True, metadata={
        "description": "extension: the rules that kept it at its policy's last prune"})
    progress = fields.Nested(BackupProgressSchema)


class RestoreResultSchema(ReplySchema):
    backup_id = fields.UUID()
    volume_id = fields.UUID()
    volume_name = fields.String(allow_none=True)


class VolumeSummarySchema(SummarySchema):
    pass


class VolumeDetailSchema(ReplySchema):
    id = fields.UUID()
    status = fields.String()
    size = fields.Integer()
    availability_zone = fields.String()
    created_at = fields.String()
    updated_at = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    volume_type = fields.String()
    snapshot_id = fields.UUID(allow_none=True)
    source_volid = fields.UUID(allow_none=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String())
    links = fields.List(fields.Nested(LinkSchema))
    user_id = fields.String()
    bootable = fields.String(metadata={"enum": ["true", "false"]})
    encrypted = fields.Boolean()
    multiattach = fields.Boolean()
    attachments = fields.List(fields.Dict())


class SnapshotDetailSchema(ReplySchema):
    id = fields.UUID()
    created_at = fields.String()
    updated_at = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    volume_id = fields.UUID()
    status = fields.String()
    size = fields.Integer()
    metadata = fields.Dict(keys=fields.String(), values=fields.String())
    progress = fields.String(data_key="os-extended-snapshot-attributes:progress")
    project_id = fields.String(data_key="os-extended-snapshot-attributes:project_id")


class QuotaSetReplySchema(ReplySchema):
    """Resource → limit, or with usage=true resource → {limit, in_use, reserved}."""

    id = fields.String(metadata={"description": "the project (absent after an update)"})


class LimitsSchema(ReplySchema):
    rate = fields.List(fields.Dict())
    absolute = fields.Dict(keys=fields.String(), values=fields.Integer())


class ServiceSchema(ReplySchema):
    binary = fields.String()
    host = fields.String()
    zone = fields.String()
    status = fields.String(metadata={"enum": ["enabled", "disabled"]})
    state = fields.String(metadata={"enum": ["up", "down"]})
    updated_at = fields.String(allow_none=True)
    disabled_reason = fields.String(allow_none=True)
    cluster = fields.String(allow_none=True)


class ServiceToggleReplySchema(ReplySchema):
    host = fields.String()
    binary = fields.String()
    status = fields.String()
    disabled = fields.Boolean()
    disabled_reason = fields.String()


class AvailabilityZoneSchema(ReplySchema):
    class _State(ReplySchema):
        available = fields.Boolean()

    zoneName = fields.String()
    zoneState = fields.Nested(_State)


class VersionsSchema(ReplySchema):
    versions = fields.List(fields.Dict())


class FaultSchema(ReplySchema):
    """{"<faultName>": {"code": N, "message": "..."}}: one key, named after the fault."""

    class _Fault(ReplySchema):
        code = fields.Integer()
        message = fields.String()
        retryAfter = fields.String(metadata={"description": "413 only"})

    badRequest = fields.Nested(_Fault)
    unauthorized = fields.Nested(_Fault)
    forbidden = fields.Nested(_Fault)
    itemNotFound = fields.Nested(_Fault)
    badMethod = fields.Nested(_Fault)
    computeFault = fields.Nested(_Fault)
    overLimit = fields.Nested(_Fault)
    badMediaType = fields.Nested(_Fault)
    serviceUnavailable = fields.Nested(_Fault)


class BackupGCResultSchema(Schema):
    store = fields.String()
    scope = fields.String()
    objects_freed = fields.Integer()
    bytes_freed = fields.Integer()
    unknown_objects_freed = fields.Integer()
    unknown_bytes_freed = fields.Integer()
    objects_skipped = fields.Integer()
    objects_listed = fields.Integer()
    elapsed_s = fields.Float()


class BackupGCSchema(Schema):
    """A garbage collection of a store and what it freed."""

    id = fields.String()
    status = fields.String(metadata={"description": "queued, running, succeeded, failed"})
    scope = fields.String()
    host = fields.String()
    store = fields.String(allow_none=True)
    created_at = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    result = fields.Nested(BackupGCResultSchema, allow_none=True)
    error = fields.String(allow_none=True)
