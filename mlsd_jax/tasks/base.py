"""The ``Task``: everything one problem needs, composed from plain parts.

One trainer, one evaluator and one exporter are written against this dataclass; a new problem
is a new builder function that fills it in, not a new class hierarchy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import flax.linen as nn
import numpy as np

Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Task:
    """A problem, assembled.

    Attributes:
      name: task name (``ranking``...).
      model: the Flax module.
      consts: fitted, non-trained state (feature transforms) as a pytree of arrays; saved in
        checkpoints and baked into exports.
      forward: ``forward(model, params, consts, inputs, *, train, rng) -> outputs``: the one
        feature path shared by training, evaluation, serving and export.
      loss_fn: ``loss_fn(outputs, batch) -> scalar``.
      metric_fns: ``name -> fn(outputs, batch) -> [B]`` per-example (per-list) values.
      example_weight: ``fn(batch) -> [B]``: which examples count in the metric means (padding
        rows give 0).
      train_batches: ``(seed, start_step) -> iterator`` of global-batch dicts (process-local
        slices in multi-process runs).
      eval_splits: ``split -> () -> iterator`` of batches covering the whole split.
      input_keys: batch keys that are model inputs (the rest are labels and masks).
      export_signature: ``key -> (shape with None for free dims, numpy dtype)``.
      target_metric / target_mode: the validation metric for early stopping and best checkpoint.
      info: dataset sizes, credits and other facts for results.json.
    """

    name: str
    model: nn.Module
    consts: Any
    forward: Callable[..., Any]
    loss_fn: Callable[[Any, Batch], Any]
    metric_fns: Mapping[str, Callable[[Any, Batch], Any]]
    example_weight: Callable[[Batch], Any]
    train_batches: Callable[[int, int], Iterator[Batch]]
    eval_splits: Mapping[str, Callable[[], Iterator[Batch]]]
    example_batch: Batch
    input_keys: tuple[str, ...]
    export_signature: Mapping[str, tuple[tuple[int | None, ...], Any]]
    target_metric: str
    target_mode: str = "max"
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def inputs(self, batch: Batch) -> dict:
        return {k: batch[k] for k in self.input_keys}

    def predict(self, params, consts, inputs):
        """Inference: ``predict(params, consts, inputs) -> outputs`` (what export serves)."""
        return self.forward(self.model, params, consts, inputs, train=False, rng=None)
