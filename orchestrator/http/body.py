"""Request text: the JSON body, the characters no database can store (body and URL),
and loading a body with a marshmallow schema into Cinder's 400 message."""
from __future__ import annotations

import json

from flask import current_app
from flask import g
from flask import request
from marshmallow import Schema
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from orchestrator import errors


class UnsupportedMediaType(errors.OrchestratorError):
    code = 415
    default_message = "Unsupported Content-Type"

    def __init__(self, ctype: str | None = None):
        super().__init__(f"Unsupported Content-Type {ctype!r}: send application/json."
                         if ctype else None)


def json_body() -> dict:
    """The JSON body as a dict.

    :raises UnsupportedMediaType: a body that is not declared as JSON (415).
    :raises InvalidInput: malformed, not an object, or holding text no database can store.
    """
    raw = _raw_body()
    ctype = request.mimetype or ""
    if raw and ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise UnsupportedMediaType(ctype)
    if not raw:
        raise errors.InvalidInput("Malformed request body: the body is empty.")
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise errors.InvalidInput("Malformed request body") from None
    if not isinstance(data, dict):
        raise errors.InvalidInput("Malformed request body: expected a JSON object.")
    _check_text(data, depth=0)
    return data


def _raw_body() -> bytes:
    """The body's bytes; past ``MAX_CONTENT_LENGTH`` a 413, with or without a length.

    Werkzeug refuses a declared Content-Length past the limit, but a chunked body
    (no length) it cuts at the limit, which then read as malformed JSON.

    :raises RequestEntityTooLarge:
    """
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None or limit is None or "body_bytes" in g:
        return g.get("body_bytes") or request.get_data(cache=True)
    stream = request.environ["wsgi.input"]
    parts, size = [], 0
    while size <= limit:
        part = stream.read(limit + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        raise RequestEntityTooLarge()
    g.body_bytes = b"".join(parts)
    return g.body_bytes


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _check_text(value, depth: int) -> None:
    """Refuse NUL characters and unpaired surrogates (PostgreSQL and UTF-8 cannot hold them)."""
    if depth > 32:
        raise errors.InvalidInput("Malformed request body: nested too deeply.")
    if isinstance(value, str):
        if "\x00" in value:
            raise errors.InvalidInput("Malformed request body: NUL characters are not "
                                      "allowed in strings.")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidInput("Malformed request body: strings must be valid "
                                      "Unicode (unpaired surrogate).") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, depth + 1)
            _check_text(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_text(v, depth + 1)


def check_request_text() -> None:
    """Refuse NUL characters in the path and the query string. :raises InvalidInput:"""
    if "\x00" in request.path or any("\x00" in k or "\x00" in v
                                     for k, v in request.args.items(multi=True)):
        raise errors.InvalidInput("Invalid input received: NUL characters are not allowed in "
                                  "the URL.")


def load(schema: Schema, data) -> dict:
    """Validate with a marshmallow schema. :raises InvalidInput: naming the field."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise errors.InvalidInput(f"Invalid input received: {_flatten(exc.messages)}") from None


def _flatten(messages, prefix="") -> str:
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            name = f"{prefix}{key}" if key != "_schema" else prefix.rstrip(".")
            parts.append(_flatten(value, f"{name}." if name else ""))
        return "; ".join(parts)
    if isinstance(messages, list):
        text = " ".join(str(m) for m in messages)
        return f"{prefix.rstrip('.')}: {text}" if prefix else text
    return f"{prefix.rstrip('.')}: {messages}" if prefix else str(messages)
