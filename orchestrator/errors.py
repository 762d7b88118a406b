"""One exception tree; the HTTP layer maps each class to a Cinder fault."""
from __future__ import annotations


class OrchestratorError(Exception):
    """Base of every error a request can end in. ``code`` is the HTTP status."""

    code = 500
    default_message = "An unknown error occurred."

    def __init__(self, message: str | None = None):
        self.message = message or self.default_message
        super().__init__(self.message)


class Invalid(OrchestratorError):
    code = 400
    default_message = "Invalid input received."


class InvalidInput(Invalid):
    pass


class InvalidBackup(Invalid):
    pass


class InvalidVolume(Invalid):
    pass


class InvalidSnapshot(Invalid):
    pass


class NotAuthenticated(OrchestratorError):
    code = 401
    default_message = "Authentication required."


class PolicyNotAuthorized(OrchestratorError):
    code = 403
    default_message = "Policy doesn't allow this operation to be performed."

    def __init__(self, action: str | None = None, message: str | None = None):
        super().__init__(message or (f"Policy doesn't allow {action} to be performed."
                                     if action else None))


class NotFound(OrchestratorError):
    code = 404
    default_message = "Resource could not be found."


class BackupNotFound(NotFound):
    def __init__(self, backup_id: str):
        super().__init__(f"Backup {backup_id} could not be found.")


class VolumeNotFound(NotFound):
    def __init__(self, volume_id: str):
        super().__init__(f"Volume {volume_id} could not be found.")


class SnapshotNotFound(NotFound):
    def __init__(self, snapshot_id: str):
        super().__init__(f"Snapshot {snapshot_id} could not be found.")


class MarkerNotFound(NotFound):
    def __init__(self, marker: str):
        super().__init__(f"Marker {marker} could not be found.")


class NotSupported(OrchestratorError):
    code = 405
    default_message = "Operation not supported."


class NotAcceptable(OrchestratorError):
    code = 406
    default_message = "Version not supported."


class Conflict(OrchestratorError):
    code = 409
    default_message = "Conflicting request."


class OverQuota(OrchestratorError):
    """413 with Retry-After: 0 (cinderclient only retries when it is >= 1)."""

    code = 413
    default_message = "Quota exceeded."


class ServiceUnavailable(OrchestratorError):
    code = 503
    default_message = "Service unavailable."


class ServiceNotFound(NotFound):
    """No live backup host for a delete, restore or reset: Cinder answers 404 here."""

    def __init__(self, binary: str = "cinder-backup"):
        super().__init__(f"Service {binary} could not be found.")


class InvalidAvailabilityZone(Invalid):
    def __init__(self, zone: str):
        super().__init__(f"Availability zone '{zone}' is invalid.")


class NoLiveHost(ServiceUnavailable):
    def __init__(self, binary: str, az: str | None):
        where = f" in availability zone {az}" if az else ""
        super().__init__(f"Service {binary} could not be found: no enabled {binary} host"
                         f" has sent a heartbeat recently{where}.")


class BrokerUnavailable(ServiceUnavailable):
    def __init__(self, detail: str):
        super().__init__(f"The job queue is unavailable ({detail}); nothing was changed,"
                         " retry later.")
