"""Device mesh and logical-axis sharding: one rules table maps model axis names to mesh axes.

Layers only name their axes (model.py); this file alone decides where they live. With the
default mesh everything is data-parallel: parameters replicated, the batch split. With
`mesh.fsdp > 1` every weight is also split along its `embed` axis, and Adam's moments with it.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gptjax.config import MeshConfig
from gptjax.errors import UserError

MESH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or axes); None means replicated.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "vocab": None,
    "embed": "fsdp",
    "heads": None,
    "head_dim": None,
    "mlp": None,
}


class MeshError(UserError):
    """A mesh that does not fit the devices or the batch."""


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    data, fsdp = cfg.data, cfg.fsdp
    if data == -1:
        data = n // fsdp if n % fsdp == 0 else 0
    if fsdp == -1:
        fsdp = n // data if n % data == 0 else 0
    if data * fsdp != n:
        raise MeshError(f"mesh data={cfg.data} x fsdp={cfg.fsdp} does not fit {n} devices; "
                        f"make mesh.data x mesh.fsdp equal {n} (or set one to -1)")
    return Mesh(np.asarray(devices).reshape(data, fsdp), MESH_AXES)


def spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec for logical `axes`; a dimension the mesh does not divide stays whole."""
    parts = []
    for name, size in zip(axes, shape):
        mesh_axes = RULES.get(name) if name else None
        if mesh_axes is not None:
            n = math.prod(mesh.shape[a] for a in ((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes))
            if size % n:
                mesh_axes = None
        parts.append(mesh_axes)
    return P(*parts)


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for a tree of nnx Variables (params, or optimizer state that mirrors them).

    Variables carry their logical `axes`; other leaves (step counts) are replicated.
    """
    def one(leaf):
        if isinstance(leaf, nnx.Variable):
            axes = leaf.get_metadata().get("axes") or (None,) * len(leaf.shape)
            return leaf.replace(NamedSharding(mesh, spec(axes, leaf.shape, mesh)))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batches are [..., rows, time]: rows split over the batch axes, everything else whole."""
    return NamedSharding(mesh, P(*(None,) * (ndim - 2), RULES["batch"], None))


def n_batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in RULES["batch"])


def put_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global batch from this process's rows (all rows when there is one process)."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh, local_rows.ndim), local_rows)


def process_rows(batch_size: int) -> slice:
    """Which rows of every (micro-)batch this process loads."""
    per = batch_size // jax.process_count()
    return slice(jax.process_index() * per, (jax.process_index() + 1) * per)
