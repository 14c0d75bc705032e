"""Optimizers from config: optax transform + LR schedule (warmup then cosine) + clipping.

Parameter groups are chosen by parameter *name* (the last key of its path, e.g. ``kernel``,
``bias``, ``scale``, ``embedding``), so the masks are functions of the param pytree and work
before the tree exists (optax calls them with the params or updates):

* AdamW's weight decay applies only to params whose name matches ``optim.decay_params``
  (``kernel`` by default: no decay on biases, norm scales/biases or embedding tables).
* Embedding tables (names matching ``optim.embedding.params``) may get their own optimizer,
  ``optim.embedding.name``, e.g. row-wise Adagrad as in DLRM / TorchRec.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mlsd_jax.errors import check

EMBEDDING_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "adam", "sgd")


@dataclasses.dataclass
class EmbeddingOptimConfig:
    """Optimizer for embedding tables; ``name: null`` keeps them on the main optimizer."""

    name: str | None = None      # null | rowwise_adagrad | adagrad | adam | sgd
    lr: float = 0.05             # peak lr; follows optim.schedule's warmup and decay shape
    eps: float = 1e-8            # (rowwise_)adagrad denominator
    initial_accumulator_value: float = 0.0  # (rowwise_)adagrad
    params: str = "embedding"    # regex full-matched against each param's name
    # true: update only the looked-up rows (no dense table gradient; rowwise_adagrad or sgd),
    # see mlsd_jax.training.sparse
    sparse: bool = False


@dataclasses.dataclass
class OptimConfig:
    name: str = "adamw"          # adamw | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.999
    momentum: float = 0.9        # sgd only
    schedule: str = "cosine"     # cosine | constant
    warmup_steps: int = 50
    end_lr_factor: float = 0.01  # final lr = lr * end_lr_factor (cosine)
    clip_norm: float | None = 1.0
    # adamw: regex full-matched against each param's name; matching params (never embedding
    # tables) are decayed. null decays every param.
    decay_params: str | None = "kernel"
    # exponential moving average of the weights (e.g. 0.999), used for evaluation and export;
    # null: none. The decay ramps up as min(ema_decay, (1 + step) / (10 + step)).
    ema_decay: float | None = None
    embedding: EmbeddingOptimConfig = dataclasses.field(default_factory=EmbeddingOptimConfig)

    def __post_init__(self):
        if isinstance(self.embedding, Mapping):
            fields = {f.name for f in dataclasses.fields(EmbeddingOptimConfig)}
            unknown = set(self.embedding) - fields
            if unknown:
                raise ValueError(f"unknown optim.embedding keys {sorted(unknown)}; "
                                 f"valid: {sorted(fields)}")
            self.embedding = EmbeddingOptimConfig(**self.embedding)
        if self.embedding.sparse and self.embedding.name not in ("rowwise_adagrad", "sgd"):
            raise ValueError(f"optim.embedding.sparse=true needs optim.embedding.name "
                             f"rowwise_adagrad or sgd (the row updates that touch only looked-up "
                             f"rows), got {self.embedding.name!r}")
        check(self.lr > 0, "optim.lr", self.lr, "a learning rate > 0")
        check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "a value >= 0")
        for key in ("b1", "b2"):
            value = getattr(self, key)
            check(0 <= value < 1, f"optim.{key}", value, "a value in [0, 1)")
        check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "an integer >= 0")
        check(0 <= self.end_lr_factor <= 1, "optim.end_lr_factor", self.end_lr_factor,
              "a value in [0, 1]")
        check(self.clip_norm is None or self.clip_norm > 0, "optim.clip_norm", self.clip_norm,
              "null or a value > 0")
        check(self.ema_decay is None or 0 < self.ema_decay < 1, "optim.ema_decay",
              self.ema_decay, "null or a value in (0, 1)")


def ema_update(ema, params, decay: float, step):
    """One step of the weights' moving average, with the warm-up ramp
    ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's ExponentialMovingAverage)."""
    import jax.numpy as jnp

    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(e.dtype), ema, params)


# ------------------------------------------------------------------------------ param groups
def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_name(path) -> str:
    """The parameter's own name: the last dict key / attribute of its pytree path."""
    for key in reversed(path):
        if isinstance(key, jax.tree_util.DictKey):
            return str(key.key)
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name != "value":
            return key.name
    return ""


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{key}={pattern!r} is not a valid regular expression: {e}") from None


def _map_names(fn: Callable[[str], Any], params):
    """``fn(param_name)`` for each param; boxed (logically partitioned) params count as one."""
    return jax.tree_util.tree_map_with_path(lambda p, _: fn(param_name(p)), params,
                                            is_leaf=_is_box)


def embedding_labels(pattern: str = "embedding") -> Callable:
    """Params -> pytree of ``"embedding"`` (name matches ``pattern``) or ``"default"``."""
    rx = _compile(pattern, "optim.embedding.params")
    return lambda params: _map_names(
        lambda n: "embedding" if rx.fullmatch(n) else "default", params)


def decay_mask(decay_pattern: str = "kernel", embedding_pattern: str = "embedding") -> Callable:
    """Params -> pytree of bools: True where weight decay applies (kernels, not tables)."""
    decay = _compile(decay_pattern, "optim.decay_params")
    table = _compile(embedding_pattern, "optim.embedding.params")
    return lambda params: _map_names(
        lambda n: bool(decay.fullmatch(n)) and not table.fullmatch(n), params)


# --------------------------------------------------------------------------- row-wise Adagrad
class ScaleByRowwiseAdagradState(NamedTuple):
    sum_of_squares: optax.Updates  # per param: one float32 accumulator per row, shape [rows]


def _row_accumulator(value: float):
    def make(p):
        if _is_box(p):  # keep the row axis' logical name so the state shards like the rows
            return p.replace(value=make(p.value), names=p.names[:1])
        if p.ndim < 2:
            raise ValueError(f"row-wise Adagrad needs tables of shape [rows, ...], got a param of "
                             f"shape {p.shape}; check optim.embedding.params")
        return jnp.full(p.shape[:1], value, jnp.float32)
    return make


def scale_by_rowwise_adagrad(initial_accumulator_value: float = 0.0,
                             eps: float = 1e-8) -> optax.GradientTransformation:
    """Adagrad with one accumulator per table row (FBGEMM's EXACT_ROWWISE_ADAGRAD).

    ``acc[r] += mean_j g[r, j]**2``; ``update[r] = g[r] / (sqrt(acc[r]) + eps)``. Rows with zero
    gradient (not looked up in the batch) keep their accumulator and do not move.
    """
    def init_fn(params):
        return ScaleByRowwiseAdagradState(
            jax.tree.map(_row_accumulator(initial_accumulator_value), params, is_leaf=_is_box))

    def update_fn(updates, state, params=None):
        del params
        acc = jax.tree.map(
            lambda g, a: a + jnp.mean(jnp.square(g.astype(jnp.float32)),
                                      axis=tuple(range(1, g.ndim))),
            updates, state.sum_of_squares)
        updates = jax.tree.map(
            lambda g, a: (g / (jnp.sqrt(a) + eps).reshape(a.shape + (1,) * (g.ndim - 1))
                          ).astype(g.dtype),
            updates, acc)
        return updates, ScaleByRowwiseAdagradState(acc)

    return optax.GradientTransformation(init_fn, update_fn)


def rowwise_adagrad(learning_rate: optax.ScalarOrSchedule, initial_accumulator_value: float = 0.0,
                    eps: float = 1e-8) -> optax.GradientTransformation:
    """Row-wise Adagrad step: ``p[r] -= lr * g[r] / (sqrt(acc[r]) + eps)``."""
    return optax.chain(scale_by_rowwise_adagrad(initial_accumulator_value, eps),
                       optax.scale_by_learning_rate(learning_rate))


# ------------------------------------------------------------------------------------ clipping
def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """:func:`optax.clip_by_global_norm` (same result, same empty state) that takes the norm as
    ``update(..., global_norm=norm)`` when the caller has it already.

    The trainer computes the gradient norm for its metrics and its finite check; passing it in
    saves a second pass over every gradient (with the update inside a conditional, XLA cannot
    merge the two). Without ``global_norm`` the norm is computed here.
    """
    def update_fn(updates, state, params=None, *, global_norm=None, **extra_args):
        del params, extra_args
        g_norm = optax.tree.norm(updates) if global_norm is None else global_norm
        trigger = jnp.squeeze(g_norm < max_norm)

        def clip_fn(t):
            return jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm)

        return jax.tree.map(clip_fn, updates), state

    return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------------- builders
def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.join_schedules(
                [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), optax.constant_schedule(cfg.lr)],
                [cfg.warmup_steps])
        return optax.constant_schedule(cfg.lr)
    if cfg.schedule == "cosine":
        warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=cfg.lr * cfg.end_lr_factor)
    raise ValueError(f"optim.schedule={cfg.schedule!r}; valid choices: 'cosine', 'constant'")


def _embedding_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    emb = cfg.embedding
    schedule = make_schedule(dataclasses.replace(cfg, lr=emb.lr), total_steps)
    if emb.name == "rowwise_adagrad":
        return rowwise_adagrad(schedule, emb.initial_accumulator_value, emb.eps)
    if emb.name == "adagrad":
        return optax.adagrad(schedule, emb.initial_accumulator_value, emb.eps)
    if emb.name == "adam":
        return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    if emb.name == "sgd":
        return optax.sgd(schedule)
    raise ValueError(f"optim.embedding.name={emb.name!r}; valid choices: null, "
                     + ", ".join(repr(n) for n in EMBEDDING_OPTIMIZERS))


def _main_optimizer(cfg: OptimConfig, schedule) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        mask = (None if cfg.decay_params is None
                else decay_mask(cfg.decay_params, cfg.embedding.params))
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask)
    if cfg.name == "adam":
        return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    if cfg.name == "sgd":
        return optax.sgd(schedule, momentum=cfg.momentum)
    raise ValueError(f"optim.name={cfg.name!r}; valid choices: 'adamw', 'adam', 'sgd'")


def make_sparse_optimizer(cfg: OptimConfig, total_steps: int):
    """For ``optim.embedding.sparse``: ``(dense_tx, schedule, row_schedule)``.

    ``dense_tx`` is the main optimizer for the non-table params (clipping is done by the step,
    over dense and row gradients together); tables are updated row by row
    (:mod:`mlsd_jax.training.sparse`) with ``row_schedule``.
    """
    schedule = make_schedule(cfg, total_steps)
    row_schedule = make_schedule(dataclasses.replace(cfg, lr=cfg.embedding.lr), total_steps)
    return _main_optimizer(cfg, schedule), schedule, row_schedule


def make_optimizer(cfg: OptimConfig, total_steps: int):
    """Returns ``(tx, schedule)``; ``schedule`` is the main (non-embedding) learning rate.

    ``tx.update(grads, state, params, global_norm=norm)`` reuses a gradient norm the caller has
    computed for the clipping (:func:`clip_by_global_norm`); without it the norm is computed."""
    schedule = make_schedule(cfg, total_steps)
    core = _main_optimizer(cfg, schedule)
    if cfg.embedding.name is not None:
        core = optax.multi_transform(
            {"default": core, "embedding": _embedding_optimizer(cfg, total_steps)},
            embedding_labels(cfg.embedding.params))
    parts = [clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    return optax.chain(*parts, core), schedule
