"""Devices and hosts: a ``data`` mesh over every device, batch placement, multi-host start.

A build is data-parallel: each batch is split over the mesh's ``data`` axis, parameters and
accumulators are replicated, and the sums over samples inside the jitted steps become
all-reduces chosen by XLA. The same code runs on one CPU, several GPUs or a TPU pod slice; with
several processes (:func:`initialize`), every process runs the same program on the same data
and transfers only the rows of its own devices.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"
log = logging.getLogger("libjax")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Start multi-host JAX. Without arguments the cluster is detected (TPU pods, SLURM, ...);
    on CPU-only hosts, cross-process collectives go through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    log.info("process %d of %d; %d devices in all", jax.process_index(), jax.process_count(),
             jax.device_count())


class Placement:
    """Where a build's arrays live: batches split over ``data``, everything else replicated."""

    def __init__(self, mesh: Mesh | None = None):
        self.mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), (DATA,))
        self.size = self.mesh.shape[DATA]
        self._batch = NamedSharding(self.mesh, PartitionSpec(DATA))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def is_writer(self) -> bool:
        """Whether this process writes results (process 0)."""
        return jax.process_index() == 0

    def batch(self, x: np.ndarray) -> jax.Array:
        """A global array split over ``data`` along axis 0 (length divisible by ``size``)."""
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self._batch, lambda idx: x[idx])

    def replicate(self, tree):
        """Every array of ``tree`` as a global array with a full copy on each device."""
        def put(a):
            a = np.asarray(a)
            return jax.make_array_from_callback(a.shape, self._replicated, lambda idx: a[idx])
        return jax.tree.map(put, tree)

    def batch_like(self, shape, dtype) -> jax.ShapeDtypeStruct:
        """The abstract twin of :meth:`batch`'s array (for compiling ahead)."""
        return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=self._batch)

    def replicated_like(self, tree, dtype=lambda d: d):
        """Abstract twins of :meth:`replicate`'s arrays (for compiling ahead), with their dtypes
        mapped by ``dtype``."""
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
            a.shape, dtype(a.dtype), sharding=self._replicated), tree)

    @staticmethod
    def host(tree):
        """A replicated global array (or tree of them) as NumPy, on any process."""
        return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)

    @staticmethod
    def gather(x) -> np.ndarray:
        """A batch split over ``data`` (see :meth:`batch`) in full, as NumPy, on every
        process."""
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
