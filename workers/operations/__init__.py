"""The run half of each job type; importing the package registers them all."""
from workers.operations import backups
from workers.operations import storage  # noqa: F401 - registers the run half
from workers.operations import volumes
from workers.operations.base import RUNNERS
from workers.operations.base import RunHalf
from workers.operations.base import runs
from workers.operations.base import unregister

__all__ = ["RUNNERS", "RunHalf", "backups", "runs", "unregister", "volumes"]
