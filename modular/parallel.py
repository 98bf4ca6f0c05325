"""Data parallelism over every device (and every process) with jax.jit + NamedSharding.

One 1-D mesh axis 'data': batches are split along it, parameters and optimizer state are replicated.
The same code runs on 1 CPU, on `--xla_force_host_platform_device_count=8`, on a GPU, and across
processes after `jax.distributed.initialize()`; each process feeds its own slice of the global batch.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Join a multi-process run when the launcher says so (MODULAR_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID).

    On TPU pods and SLURM/GKE GPU clusters plain `jax.distributed.initialize()` discovers everything;
    the variables exist for CPU clusters and tests (gloo collectives on localhost).
    """
    coordinator = os.environ.get("MODULAR_COORDINATOR")
    if not coordinator or jax.distributed.is_initialized():
        return
    # Only affects CPU collectives; set before anything initializes a backend.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=int(os.environ["MODULAR_NUM_PROCESSES"]),
                               process_id=int(os.environ["MODULAR_PROCESS_ID"]))


def make_mesh() -> Mesh:
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int) -> None:
    n = jax.device_count()
    if batch_size % n:
        raise ValueError(f"Batch size {batch_size} is not divisible by the {n} devices it is split over.")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Global numpy batch (a pytree, same on every process) -> global arrays split along 'data'.

    Each process contributes only its own contiguous slice, so the result is identical for any
    number of processes and devices. Arrays already split along 'data' (a streaming input's global
    arrays) pass through unchanged.
    """
    sharding = data_sharding(mesh)
    pid, nproc = jax.process_index(), jax.process_count()

    def put(x) -> jax.Array:
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        x = np.asarray(x)
        check_batch_size(x.shape[0])
        local = x.shape[0] // nproc
        return jax.make_array_from_process_local_data(sharding, x[pid * local:(pid + 1) * local], x.shape)

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host values (equal on every process) -> arrays replicated over the mesh."""
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Device arrays -> numpy, on every process (replicated arrays need no communication)."""
    def get(x: Any) -> np.ndarray:
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_replicated or x.is_fully_addressable:
            return np.asarray(x.addressable_data(0)) if x.is_fully_replicated else np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)
