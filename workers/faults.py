"""Crash points for the crash tests: a worker that reaches the point its settings name
(``ORCH_CRASH_POINT``, empty in production) kills itself with SIGKILL, a real crash at a
precise place, so that tests can show that nothing referenced is lost at any of them."""
from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


def crash_point(settings, name: str) -> None:
    """Die here, at once and without cleaning up, if ``settings.crash_point`` is ``name``."""
    if settings.crash_point and settings.crash_point == name:
        log.warning("crash point %s reached: killing this process", name)
        os.kill(os.getpid(), signal.SIGKILL)
