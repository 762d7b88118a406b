"""Volume backends on a storage node."""
from workers.volumes.file import FileVolumeBackend

__all__ = ["FileVolumeBackend"]
