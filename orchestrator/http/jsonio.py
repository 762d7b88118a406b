"""Response bodies encoded with orjson (a list page of 100 backups is ~60 KB of JSON).

Same output as Flask's provider for everything the views return; values orjson
does not take as they are (dates, dataclasses, decimals, huge integers, text
with lone surrogates) go through Flask's own encoder, so nothing changes shape.
"""
from __future__ import annotations

import orjson
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class FastJSONProvider(DefaultJSONProvider):
    sort_keys = False

    def encode(self, obj) -> bytes:
        try:
            return orjson.dumps(obj, default=self.default, option=_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError: integer > 64 bits, lone surrogate…
            return super().dumps(obj).encode()

    def dumps(self, obj, **kwargs) -> str:
        if kwargs:
            return super().dumps(obj, **kwargs)
        return self.encode(obj).decode()

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(self.encode(obj) + b"\n", mimetype=self.mimetype)
