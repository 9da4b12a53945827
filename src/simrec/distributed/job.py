"""What the driver sends each Horovod rank and what a rank sends back.

Kept free of TensorFlow: the Spark task that relays a rank's report unpickles it, and importing
TensorFlow there would cost every launch tens of seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from simrec.config import Settings
from simrec.distributed.shards import RowFilter, RowGroup, Shard
from simrec.lake.tables import TableVersion


@dataclass(frozen=True)
class DistributedJob:
    """Everything a rank needs, planned on the driver (picklable; paths absolute)."""

    settings: Settings
    table: TableVersion
    row_groups: tuple[RowGroup, ...]  # the whole snapshot
    shards: tuple[Shard, ...]
    shard_rows: tuple[int, ...]  # training rows per shard
    row_filter: RowFilter
    run_id: str
    classes_per_batch: int
    examples_per_class: int
    steps_per_epoch: int
    learning_rate: float
    distributed_optimizer: bool = True

    @property
    def batch_per_worker(self) -> int:
        return self.classes_per_batch * self.examples_per_class


@dataclass
class WorkerReport:
    """What one rank sends back to the driver."""

    rank: int
    size: int
    initial_weights_digest: str
    final_weights_digest: str  # after the last epoch, before rank 0 restores its best epoch
    history: dict[str, list[float]]
    epoch_seconds: list[float]
    images_per_epoch: int  # this rank's
    model_uri: str | None = None
    best_epoch: int = 0
    best_val_recall_at_1: float = -1.0
