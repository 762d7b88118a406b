"""Cinder's fault bodies: {"<faultName>": {"code": N, "message": "..."}}."""
from __future__ import annotations

import logging

from flask import Flask
from flask import current_app
from flask import jsonify
from flask import request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from orchestrator import errors

log = logging.getLogger(__name__)

FAULT_NAMES = {
    400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
    405: "badMethod", 406: "computeFault", 409: "conflictingRequest", 413: "overLimit",
    415: "badMediaType", 500: "computeFault", 501: "notImplemented",
    503: "serviceUnavailable",
}


def fault_response(code: int, message: str, headers: dict | None = None):
    name = FAULT_NAMES.get(code, "computeFault" if code >= 500 else "badRequest")
    fault = {"code": code, "message": message}
    if code == 413:
        fault["retryAfter"] = "0"
    response = jsonify({name: fault})
    response.status_code = code
    if code == 413:
        response.headers["Retry-After"] = "0"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(errors.OrchestratorError)
    def _domain(exc: errors.OrchestratorError):
        if exc.code >= 500 and exc.code != 503:
            log.error("request failed: %s", exc.message)
        return fault_response(exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = exc.code or 500
        messages = {404: "The resource could not be found.",
                    405: f"The method {request.method} is not allowed for {request.path}.",
                    413: f"Request is too large: bodies are limited to "
                         f"{current_app.config.get('MAX_CONTENT_LENGTH')} bytes."}
        # Keep what the exception says the client needs (e.g. Allow on a 405).
        keep = {k: v for k, v in exc.get_headers() if k.lower() not in
                ("content-type", "content-length")}
        return fault_response(code, messages.get(code, exc.description or exc.name), keep)

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError):
        if exc.connection_invalidated:  # the database went away (restart, failover)
            log.warning("database connection lost serving a request: %s", exc.orig)
            return fault_response(503, "The database is unavailable; the request was not "
                                       "completed, retry later.", {"Retry-After": "1"})
        return _unexpected(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error serving a request")
        return fault_response(500, "The server has either erred or is incapable of performing "
                                   "the requested operation.")
