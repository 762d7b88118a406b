"""marshmallow schemas of request bodies (unknown keys are refused)."""
from __future__ import annotations

import re
import uuid

from marshmallow import RAISE
from marshmallow import Schema
from marshmallow import ValidationError
from marshmallow import fields
from marshmallow import pre_load
from marshmallow import validate
from marshmallow import validates

METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. /]{1,255}$")
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


class Metadata(fields.Dict):
    def __init__(self, **kwargs):
        super().__init__(keys=fields.String(validate=validate.Regexp(METADATA_KEY)),
                         values=fields.String(validate=validate.Length(max=255)),
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
    """Cinder ignores unknown keys below 3.53 (the view enforces RAISE from 3.53)."""

    size = fields.Integer(allow_none=True, strict=False, validate=validate.Range(min=1))
    name = Name()
    description = Name()
    display_name = Name()
    display_description = Name()
    volume_type = fields.String(allow_none=True)
    availability_zone = fields.String(allow_none=True, validate=validate.Length(max=255))
    metadata = Metadata()
    snapshot_id = UUIDString(allow_none=True)
    source_volid = UUIDString(allow_none=True)
    imageRef = fields.String(allow_none=True)
    consistencygroup_id = fields.String(allow_none=True)
    group_id = fields.String(allow_none=True)
    backup_id = UUIDString(allow_none=True)
    multiattach = LenientBool(allow_none=True)

    @pre_load
    def _numeric_size(self, data, **kwargs):
        if isinstance(data, dict) and isinstance(data.get("size"), bool):
            raise ValidationError({"size": ["must be an integer"]})
        return data


class SnapshotCreateSchema(StrictSchema):
    volume_id = UUIDString(required=True)
    name = Name()
    description = Name()
    display_name = Name()
    display_description = Name()
    force = LenientBool(allow_none=True)
    metadata = Metadata()


class QuotaSetSchema(Schema):
    """Limits: ints >= -1; `tenant_id` and `id` are ignored (cinderclient sends tenant_id)."""

    class Meta:
        unknown = RAISE

    backups = fields.Integer(strict=False, validate=validate.Range(min=-1))
    backup_gigabytes = fields.Integer(strict=False, validate=validate.Range(min=-1))
    volumes = fields.Integer(strict=False, validate=validate.Range(min=-1))
    gigabytes = fields.Integer(strict=False, validate=validate.Range(min=-1))
    snapshots = fields.Integer(strict=False, validate=validate.Range(min=-1))
    tenant_id = fields.Raw(load_default=None)
    id = fields.Raw(load_default=None)

    @validates("backups")
    def _not_bool(self, value, **kwargs):
        if isinstance(value, bool):
            raise ValidationError("must be an integer")
