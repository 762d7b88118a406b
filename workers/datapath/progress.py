"""Rate-limited progress reports and cancellation checks.

The caller's ``progress(done, total)`` and ``cancelled()`` callbacks may touch a
database, so they are called at most once per ``byte_interval`` bytes or
``time_interval`` seconds -- and only ever from the thread that called backup,
restore or verify, never from a pool thread.
"""
import time
from collections.abc import Callable

ProgressCallback = Callable[[int, int], object]
# A callback with a true ``takes_skipped`` attribute is called as
# ``progress(done, total, skipped=n)``: n of the done bytes were holes or zero ranges
# that were not read or written (so a rate over them would flatter the job).
CancelledCallback = Callable[[], bool]


class ProgressTicker:
    """Calls ``progress``/``cancelled`` when enough bytes or time have passed."""

    def __init__(self, total: int, progress: ProgressCallback | None,
                 cancelled: CancelledCallback | None, byte_interval: int,
                 time_interval: float = 0.5) -> None:
        self.total = total
        self.progress = progress
        self.cancelled = cancelled
        self.byte_interval = byte_interval
        self.time_interval = time_interval
        self.done = 0
        self.skipped = 0
        self._with_skipped = bool(getattr(progress, "takes_skipped", False))
        self._reported_bytes = -1
        self._reported_at = 0.0
        self._checked_bytes = 0
        self._checked_at = time.monotonic()

    def report(self, done: int | None = None, force: bool = False) -> None:
        """Record ``done`` bytes and call ``progress`` if it is due (or ``force``)."""
        if done is not None:
            self.done = done
        if self.progress is None:
            return
        now = time.monotonic()
        if (force or self.done - self._reported_bytes >= self.byte_interval
                or now - self._reported_at >= self.time_interval):
            self._reported_bytes = self.done
            self._reported_at = now
            if self._with_skipped:
                self.progress(self.done, self.total, skipped=self.skipped)
            else:
                self.progress(self.done, self.total)

    def skip(self, length: int) -> None:
        """Count ``length`` of the bytes done as skipped (a hole, a zero range)."""
        self.skipped += length

    def should_cancel(self, position: int | None = None, force: bool = False) -> bool:
        """Whether the caller asked to cancel; asks ``cancelled`` only when it is due."""
        if self.cancelled is None:
            return False
        position = self.done if position is None else position
        now = time.monotonic()
        if (force or position - self._checked_bytes >= self.byte_interval
                or now - self._checked_at >= self.time_interval):
            self._checked_bytes = position
            self._checked_at = now
            return bool(self.cancelled())
        return False
