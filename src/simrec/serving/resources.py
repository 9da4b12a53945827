"""How many CPUs this process may really use: the container's cgroup CPU limit, not the
node's core count (`os.cpu_count()` reports the node's cores inside a limited pod)."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs granted by the cgroup (v2 `cpu.max`, else v1 CFS quota); None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs to size thread pools by: the cgroup limit (rounded up), capped by the CPUs
    this process may be scheduled on; at least 1."""
    schedulable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cpus = schedulable or os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def batch_workers(setting: int) -> int:
    """Micro-batch worker threads: `serving.batch_workers`, 0 = one per CPU."""
    return setting or available_cpus()


def threads_per_call(setting: int, workers: int) -> int:
    """Threads each model call may use: `setting`, 0 = the CPUs shared by the `workers`
    that run calls side by side (one worker: every CPU)."""
    return setting or max(1, available_cpus() // max(1, workers))


def size_tensorflow_threads(cpus: int) -> None:
    """TensorFlow's op thread pools sized to `cpus` (must run before TF executes any op)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError as error:  # TF already initialised (e.g. in-process tests)
        log.debug("TensorFlow threads already fixed: %s", error)
