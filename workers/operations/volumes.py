"""Run halves of the volume and snapshot job types: the node's file volume backend."""
from __future__ import annotations

from orchestrator.operations.volumes import SnapshotParams
from orchestrator.operations.volumes import VolumeCreateParams
from orchestrator.operations.volumes import VolumeDeleteParams
from workers.jobrun import JobRun
from workers.node import volume_backend
from workers.operations.base import RunHalf
from workers.operations.base import runs


@runs
class VolumeCreateRun(RunHalf):
    operation = "volume_create"

    def run(self, run: JobRun, params: VolumeCreateParams) -> None:
        volume_backend(run.settings).create_volume(run.job.resource_id, int(params.size))


@runs
class VolumeDeleteRun(RunHalf):
    operation = "volume_delete"

    def run(self, run: JobRun, params: VolumeDeleteParams) -> None:
        volumes = volume_backend(run.settings)
        for snapshot_id in params.snapshot_ids:
            volumes.delete_snapshot(snapshot_id)
        volumes.delete_volume(run.job.resource_id)


@runs
class SnapshotCreateRun(RunHalf):
    operation = "snapshot_create"

    def run(self, run: JobRun, params: SnapshotParams) -> None:
        volume_backend(run.settings).create_snapshot(run.job.resource_id, params.volume_id)


@runs
class SnapshotDeleteRun(RunHalf):
    operation = "snapshot_delete"

    def run(self, run: JobRun, params: SnapshotParams) -> None:
        volume_backend(run.settings).delete_snapshot(run.job.resource_id)
