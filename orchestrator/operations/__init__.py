"""One definition per job type (see ``base``); importing the package registers them all."""
from orchestrator.operations import backups
from orchestrator.operations import storage
from orchestrator.operations import volumes
from orchestrator.operations.base import REGISTRY
from orchestrator.operations.base import Operation
from orchestrator.operations.base import Params
from orchestrator.operations.base import RetryPolicy
from orchestrator.operations.base import get
from orchestrator.operations.base import register
from orchestrator.operations.base import truncate_reason
from orchestrator.operations.base import unregister

__all__ = ["REGISTRY", "Operation", "Params", "RetryPolicy", "backups", "get", "register",
           "storage", "truncate_reason", "unregister", "volumes"]
