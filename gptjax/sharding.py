"""Device mesh and logical-axis sharding: one rules table maps model axis names to mesh axes.

Layers only name their axes (model.py); this file alone decides where they live. With the
default mesh everything is data-parallel: parameters replicated, the batch split. With
`mesh.fsdp > 1` every weight is also split along its `embed` axis, and Adam's moments with it;
the batch is split over data x fsdp. Multi-host runs join through `jax.distributed`.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gptjax.config import MeshConfig
from gptjax.errors import UserError
from gptjax.runtime import with_flags

MESH_AXES = ("data", "fsdp")
AUTO = (jax.sharding.AxisType.Auto,)  # axes whose layout XLA may choose where we leave it open
RUNS = "runs"  # the mesh axis of runs trained side by side (gptjax.train.seeds): their stacked leading axis

# logical axis -> mesh axis (or axes); None means replicated. A `tensor` mesh axis would
# split `heads`/`mlp` and their activation twins here, and nowhere else.
RULES: dict[str, str | tuple[str, ...] | None] = {
    # parameters
    "vocab": None,
    "embed": "fsdp",
    "heads": None,
    "head_dim": None,
    "mlp": None,
    # activations: rows split over every device, features whole (the fsdp axis is busy with rows)
    "batch": ("data", "fsdp"),
    "act_embed": None,
    "act_heads": None,
    "act_mlp": None,
    "act_vocab": None,
}


class MeshError(UserError):
    """A mesh that does not fit the devices or the batch."""


COORDINATOR_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed() -> bool:
    """Join the other processes of a multi-host run when the environment describes one.

    Explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID. Otherwise jax's own detection of SLURM (srun), Open MPI and Cloud TPU
    pods, used only when it finds more than one process. Returns whether this is a
    multi-process run; on one host it does nothing. Call it before anything touches a device.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ
    if env.get(COORDINATOR_ENV[0]):
        missing = [name for name in COORDINATOR_ENV[1:] if not env.get(name, "").isdigit()]
        if missing:
            raise MeshError(f"{COORDINATOR_ENV[0]} is set but {' and '.join(missing)} missing or not a number; "
                            f"set all of {', '.join(COORDINATOR_ENV)} on every process (or none)")
        jax.distributed.initialize(env[COORDINATOR_ENV[0]], int(env["JAX_NUM_PROCESSES"]), int(env["JAX_PROCESS_ID"]))
        return True
    cluster = _detected_cluster()
    if cluster:
        jax.distributed.initialize(cluster_detection_method=cluster)  # jax reads address, count and id
        return True
    return False


# jax's own detectors we trust to run anywhere (Kubernetes' needs an extra package and API
# access, so there the JAX_* variables above are the way).
CLUSTERS = ("slurm", "ompi", "gcetpu", "gketpu")


def _detected_cluster() -> str | None:
    """The cluster jax detects around this process, if it runs more than one process."""
    try:
        from jax._src import clusters  # private: fall back to the explicit variables if it moves
        kinds = [c for c in clusters.ClusterEnv._cluster_types if c.name in CLUSTERS]
    except (ImportError, AttributeError):
        return None
    found = next((c for c in kinds if c.is_env_present()), None)
    return found.name if found is not None and found.get_process_count() > 1 else None


def is_main_process() -> bool:
    """Process 0 alone writes run files and metrics and prints, so a pod speaks once."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait here until every process arrives (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


_cores_split: str | None = None  # set by split_cores: "run" (a single run's batch) or "runs" (stacked runs)
# Below this many FLOPs per run and step, a run (or a stack) stays on one core. Such a step is a few milliseconds of
# work, and a program over two cores pays per step for starting on both and waits for the slower one: on 2
# shared cores, 2 seeds of a 16-wide model trained 1.4-2x faster on one core (BENCHMARKS.md, "Seeds together").
SPLIT_MIN_STEP_FLOPS = 5e8
# Above this share of the step's FLOPs, the work every device repeats (Muon's orthogonalisation: optim.
# replicated_flops) makes one core faster than the split: the speedrun preset's is 0.63 of its step, and it
# took 54-66 ms a step on one device against 63-81 split; AdamW's is 0, and the split is 1.36x faster
# (BENCHMARKS.md, "The two-device split by default"). The line between is not measured: a quarter.
SPLIT_MAX_REPLICATED = 0.25
# XLA:CPU aborts a process whose all-reduce waited 40 s for the other device ("Termination timeout for all
# reduce"). Its one cause found, a deadlock of too many programs in flight, `Paced` prevents; what is left is a
# device starved of CPU (a machine busy with other work, a suspended process or laptop), which is no reason to kill
# a run: it waits a day, and after 20 s XLA says on stderr that it "may be stuck" (docs/speed.md).
COLLECTIVE_FLAGS = ("--xla_cpu_collective_call_terminate_timeout_seconds=86400",
                    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=20")


def mesh_devices(cfg: MeshConfig, rows: int, step_flops: float = float("inf"), replicated_flops: float = 0) -> list:
    """The devices for a run's mesh: all of them, except for CPU cores split into devices.

    Split cores are a speed-up, not a request, so with the default mesh they follow the batch: the
    most cores whose count divides its `rows`. Where gptjax split them (`split_cores`), a run whose
    step (`step_flops`) is under SPLIT_MIN_STEP_FLOPS, or whose update repeats on every device more than
    SPLIT_MAX_REPLICATED of that (`replicated_flops`), keeps one core, and cores split for stacked
    runs serve the stacks only (runs_meshes). A count the user set (JAX_NUM_CPU_DEVICES) is split
    whatever the step. Devices that are real (accelerators) or forced (XLA_FLAGS) must fit.
    """
    devices = jax.devices()
    split = devices[0].platform == "cpu" and jax.config.jax_num_cpu_devices > 0
    if not split or (cfg.data, cfg.fsdp) != (-1, 1) or jax.process_count() > 1:
        return devices
    small = step_flops < SPLIT_MIN_STEP_FLOPS or replicated_flops > SPLIT_MAX_REPLICATED * step_flops
    if _cores_split == "runs" or (_cores_split == "run" and small):
        return devices[:1]
    return devices[:max(n for n in range(1, len(devices) + 1) if rows % n == 0)]


def split_by_gptjax(devices: list) -> bool:
    """Whether these devices are CPU cores gptjax split for a run on its own (not a count the user set)."""
    return _cores_split == "run" and len(devices) > 1 and devices[0].platform == "cpu"


def split_note(mesh: Mesh) -> str | None:
    """Said once to a run whose batch gptjax split over the CPU cores (split_cores): how, and how to keep one."""
    if not split_by_gptjax(list(mesh.devices.flat)):
        return None
    return f"training on {mesh.size} CPU cores, the batch split across them (JAX_NUM_CPU_DEVICES=1 keeps one)"


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_cores(for_runs: bool = False) -> None:
    """On a CPU host, make each core a JAX device, before JAX starts its backend (train.py calls it).

    A single run's batch splits across them, one all-reduce per step, where its step is big enough
    (mesh_devices): 1.18-1.3x the steps per second on 2 cores (BENCHMARKS.md, "Levers"). Runs stacked
    side by side (`for_runs`: train.py --seeds, sweeps) each train on a core of their own with no
    collective at all (runs_meshes). A count the user set (JAX_NUM_CPU_DEVICES, XLA_FLAGS) wins;
    accelerators leave the CPU devices unused; a JAX already started (a notebook) keeps its devices.
    Where the cores become devices, XLA's collectives wait for a starved device (COLLECTIVE_FLAGS).
    """
    global _cores_split
    forced = "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    asked = jax.config.jax_num_cpu_devices
    if forced or asked == 1 or (asked < 1 and usable_cores() < 2):
        return
    try:
        if asked < 1:
            jax.config.update("jax_num_cpu_devices", usable_cores())
    except RuntimeError:  # JAX has started already (a notebook, a test process): keep its devices
        return
    if not _backend_started():  # XLA reads its flags when the backend starts
        os.environ["XLA_FLAGS"] = with_flags(os.environ.get("XLA_FLAGS", ""), COLLECTIVE_FLAGS)
    if asked < 1:
        _cores_split = "runs" if for_runs else "run"


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge  # private: if it moves, the flags are set (too late to matter, harmless)
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):
        return False


def split_cores_for_runs() -> None:
    """split_cores for runs stacked side by side (train.py --seeds, sweeps)."""
    split_cores(for_runs=True)


def runs_meshes(mesh: Mesh, n_runs: int, step_flops: float = float("inf")) -> list[tuple[Mesh, int]]:
    """Where n_runs stacked runs train: [(mesh with a leading `runs` axis, how many of the runs it holds)].

    On cores split for runs, each core holds whole runs, spread as evenly as the cores allow. When
    they do not divide the runs, the runs split into two stacks side by side (3 on 2 cores: 2 on one
    core, 1 on the other), each its own program: one stack on one core would train all 3 at the pace
    of 3, two at the pace of 2 (BENCHMARKS.md, "Seeds together"). For runs whose step is smaller than
    SPLIT_MIN_STEP_FLOPS (`step_flops`, each), and anywhere else: one stack, its runs axis of size 1,
    every run laid out on `mesh` as it would be alone.
    """
    devices = jax.devices()
    split = _cores_split == "runs" and mesh.size == 1 and jax.process_count() == 1
    if not split or step_flops < SPLIT_MIN_STEP_FLOPS:
        return [(Mesh(mesh.devices[None], (RUNS, *mesh.axis_names), AUTO * 3), n_runs)]
    cores = min(len(devices), n_runs)
    each, more = divmod(n_runs, cores)  # `more` cores hold one run more than the others
    if not more:
        return [(_runs_on(devices[:cores], mesh), n_runs)]
    return [(_runs_on(devices[:more], mesh), more * (each + 1)), (_runs_on(devices[more:cores], mesh),
                                                                  (cores - more) * each)]


def _runs_on(devices: list, mesh: Mesh) -> Mesh:
    return Mesh(np.asarray(devices).reshape(len(devices), 1, 1), (RUNS, *mesh.axis_names), AUTO * 3)


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
    # jax.make_mesh orders TPU devices by their physical links.
    return jax.make_mesh((data, fsdp), MESH_AXES, AUTO * 2, devices=devices)


def spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh) -> P:
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
        if isinstance(leaf, nnx.Variable) and not hasattr(leaf.get_raw_value(), "shape"):
            return leaf  # a slot another optimizer owns (optax.partition's MaskedNode): nothing to place
        if isinstance(leaf, nnx.Variable):
            axes = leaf.get_metadata().get("axes") or (None,) * len(leaf.shape)
            return leaf.replace(NamedSharding(mesh, spec(axes, leaf.shape, mesh)))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def traced_under(mesh: Mesh, fn):
    """`fn`, traced with `mesh` as the context mesh, so `constrain` inside it takes effect."""
    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return traced


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Pin an activation's layout by logical axis names; a no-op outside `traced_under`.

    Without it XLA's propagation may split activations along the fsdp-sharded weights'
    axes and gather whole batches instead of gathering the (smaller) weights.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec(axes, x.shape, mesh))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Batches are [..., rows, time]: rows split over the batch axes, everything else whole; on a
    runs mesh, stacked batches [runs, ..., rows, time] are split over the runs axis too."""
    lead = [None] * (ndim - 2)
    if lead and RUNS in mesh.axis_names:
        lead[0] = RUNS
    return NamedSharding(mesh, P(*lead, RULES["batch"], None))


def n_batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in RULES["batch"])


def put_batch(local_rows: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global batch from this process's rows (all rows when there is one process)."""
    sharding = batch_sharding(mesh, local_rows.ndim)
    global_shape = (*local_rows.shape[:-2], local_rows.shape[-2] * jax.process_count(), local_rows.shape[-1])
    return jax.make_array_from_process_local_data(sharding, local_rows, global_shape)


def process_rows(batch_size: int, mesh: Mesh | None = None) -> np.ndarray | slice:
    """Which rows of every (micro-)batch this process loads: those its own devices hold, in order.

    `put_batch` places them back by the same sharding, so any device order in the mesh works.
    """
    if jax.process_count() == 1:
        return slice(0, batch_size)
    if mesh is None:  # assume each process's devices hold one contiguous block of rows
        per = batch_size // jax.process_count()
        return slice(jax.process_index() * per, (jax.process_index() + 1) * per)
    held = batch_sharding(mesh, 2).addressable_devices_indices_map((batch_size, 1)).values()
    return np.asarray(sorted({row for index in held for row in range(*index[0].indices(batch_size))}))
