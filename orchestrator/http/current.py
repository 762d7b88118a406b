"""What a view reads of the current request: the caller, the microversion, the settings."""
from __future__ import annotations

import datetime as dt

from flask import current_app
from flask import g

from orchestrator.config import Settings
from orchestrator.context import RequestContext
from orchestrator.db import utcnow
from orchestrator.http.microversion import APIVersion


def ctx() -> RequestContext:
    """The authenticated caller of this request."""
    return g.context


def mv() -> APIVersion:
    """The microversion this request negotiated."""
    return g.api_version


def settings() -> Settings:
    """The application's settings."""
    return current_app.config["ORCH_SETTINGS"]


def now() -> dt.datetime:
    """The current time, naive UTC, as the domain functions take it."""
    return utcnow()
