"""Device mesh and logical-axis sharding, declared once as data.

Layers name *logical* axes only (``batch``, ``embed``, ``mlp``, ``heads``, ``vocab``,
``table_rows``, ``length``...). A table of rules maps each logical name to a mesh axis (or to
``None``: replicated). :func:`logical_to_sharding` turns the names into ``NamedSharding``s for
init, ``jax.jit`` in/out shardings, checkpoint restore and export. Steps never mention devices.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Logical axis -> mesh axis. Data parallel by default: only the batch is split; the "model"
# mesh axis (size 1 unless asked for) carries tensor-parallel splits of the wide layers.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("length", None),
    ("features", None),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("vocab", "model"),
    ("table_rows", "model"),
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("conv_out", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape as data: ``axes`` names, ``shape`` sizes with one ``-1`` meaning "fill"."""

    axes: Sequence[str] = ("data", "model")
    shape: Sequence[int] = (-1, 1)
    rules: Sequence[Sequence[Any]] = DEFAULT_RULES
    num_devices: int | None = None  # use the first N devices (None: all)


def resolve_mesh_shape(shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    shape = [int(s) for s in shape]
    fills = [i for i, s in enumerate(shape) if s == -1]
    if len(fills) > 1:
        raise ValueError(f"mesh.shape={shape}: at most one axis may be -1 (fill)")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={shape}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if fills:
        if n_devices % known:
            raise ValueError(
                f"mesh.shape={shape}: {n_devices} devices are not divisible by {known}")
        shape[fills[0]] = n_devices // known
    if math.prod(shape) != n_devices:
        raise ValueError(
            f"mesh.shape={shape} needs {math.prod(shape)} devices but {n_devices} are in use "
            f"(set mesh.num_devices or use -1 to fill)")
    return tuple(shape)


def make_mesh(cfg: MeshConfig | Mapping[str, Any] | None = None, devices=None) -> Mesh:
    """Builds a mesh over all devices (all processes) or the first ``cfg.num_devices``."""
    cfg = _as_mesh_config(cfg)
    if devices is None:
        devices = jax.devices()
        if cfg.num_devices:
            if cfg.num_devices > len(devices):
                raise ValueError(
                    f"mesh.num_devices={cfg.num_devices} but only {len(devices)} devices exist")
            devices = devices[: cfg.num_devices]
    shape = resolve_mesh_shape(cfg.shape, len(devices))
    if len(shape) != len(cfg.axes):
        raise ValueError(f"mesh.axes={list(cfg.axes)} and mesh.shape={list(shape)} differ in length")
    device_array = np.asarray(devices, dtype=object).reshape(shape)
    # Auto axes: flax's embedding gathers on batch-sharded inputs fail under Explicit typing.
    return Mesh(device_array, tuple(cfg.axes), axis_types=(AxisType.Auto,) * len(shape))


def _as_mesh_config(cfg) -> MeshConfig:
    if cfg is None:
        return MeshConfig()
    if isinstance(cfg, MeshConfig):
        return cfg
    fields = {f.name for f in dataclasses.fields(MeshConfig)}
    unknown = set(cfg) - fields
    if unknown:
        raise ValueError(f"unknown mesh config keys {sorted(unknown)}; valid: {sorted(fields)}")
    return MeshConfig(**{k: (tuple(v) if isinstance(v, (list, tuple)) else v)
                         for k, v in dict(cfg).items()})


def validate_rules(rules: Sequence[Sequence[Any]], mesh: Mesh) -> tuple[tuple[str, Any], ...]:
    """Checks the rule table: each logical name once, mesh axes that exist."""
    seen: dict[str, Any] = {}
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"sharding rule {rule!r} must be a (logical_name, mesh_axis) pair")
        name, axis = rule[0], rule[1]
        axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
        if name in seen and seen[name] != axis:
            raise ValueError(
                f"conflicting sharding rules for logical axis {name!r}: {seen[name]!r} vs {axis!r}")
        for a in (axis if isinstance(axis, tuple) else (axis,)):
            if a is not None and a not in mesh.axis_names:
                raise ValueError(
                    f"sharding rule {name!r} -> {a!r}: mesh has axes {list(mesh.axis_names)}")
        seen[name] = axis
        out.append((name, axis))
    return tuple(out)


def logical_to_spec(names: Sequence[str | None], rules) -> P:
    """Logical names -> PartitionSpec; raises on a name the rules don't know."""
    table = dict(rules)
    axes, used = [], set()
    for name in names:
        if name is None:
            axes.append(None)
            continue
        if name not in table:
            raise KeyError(
                f"logical axis {name!r} has no sharding rule; known: {sorted(table)}")
        axis = table[name]
        flat = axis if isinstance(axis, tuple) else (axis,)
        # A mesh axis can shard only one dimension of an array: say so instead of guessing.
        clash = [a for a in flat if a is not None and a in used]
        if clash:
            raise ValueError(
                f"logical axes {tuple(names)} map mesh axis {clash[0]!r} to two dimensions; "
                f"change the rules so {name!r} maps elsewhere (or to None)")
        used.update(a for a in flat if a is not None)
        axes.append(axis)
    return P(*axes)


def logical_to_sharding(names, mesh: Mesh, rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, rules))


def tree_shardings(abstract_tree, mesh: Mesh, rules):
    """Shardings for a pytree that may hold ``nn.LogicallyPartitioned`` boxes.

    Boxed leaves use their logical names; plain leaves are replicated.
    """
    def one(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return logical_to_sharding(x.names, mesh, rules)
        return NamedSharding(mesh, P())

    return jax.tree.map(one, abstract_tree,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, rules, ndim: int = 1) -> NamedSharding:
    return logical_to_sharding(("batch",) + (None,) * (ndim - 1), mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh, rules) -> int:
    axis = dict(rules).get("batch")
    flat = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[a] for a in flat if a is not None)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules):
    """Places a host batch on the mesh, split along the batch axis.

    Single process: ``batch`` is the global batch. Multi-process: each process passes its own
    slice (process-local data) and the global array is assembled across processes.
    """
    def put(x):
        x = np.asarray(x)
        sharding = batch_sharding(mesh, rules, x.ndim)
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, x)

    return {k: put(v) for k, v in batch.items()}
