"""Search ranking: LETOR features -> listwise neural ranker -> NDCG/MRR/MAP.

Data: MSLR-WEB10K Fold1 samples (embedded default), KDD Cup 2004 protein homology, or any LETOR
fold/file from ``data.path``. Features get ``signed log1p`` + standardisation fitted on the
training queries; the transform runs inside the model's forward function, so training,
evaluation, serving and the SavedModel share it.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from mlsd_jax import metrics as M
from mlsd_jax.data import lists
from mlsd_jax.errors import check
from mlsd_jax.data.ranking import load_ranking_splits
from mlsd_jax.features import fit_log1p_standardize, log1p_standardize
from mlsd_jax.metrics.streaming import PerExampleMean
from mlsd_jax.tasks.base import Serving, Signature, Task

_METRICS = {"ndcg": M.ndcg_metric, "dcg": M.dcg_metric, "mrr": M.mrr_metric, "map": M.map_metric,
            "precision": M.precision_metric, "recall": M.recall_metric}


def ranking_metric(name: str):
    """``'ndcg@10'`` -> per-list metric fn ``(scores, labels, where) -> [B]``."""
    m = re.fullmatch(r"([a-z]+)(?:@(\d+))?", name)
    if not m or m.group(1) not in _METRICS:
        raise ValueError(f"unknown ranking metric {name!r}; valid: "
                         f"{', '.join(sorted(_METRICS))}, each optionally with @k (e.g. ndcg@10)")
    topn = int(m.group(2)) if m.group(2) else None
    return functools.partial(_METRICS[m.group(1)], topn=topn)


def forward(apply, consts, inputs, *, train: bool):
    """Raw LETOR features -> fitted transform -> ranker -> ``{"scores": [B, L]}``.

    Padded positions may hold anything (NaN, inf): they are zeroed before the transform, so
    they never reach a real item's score through attention or a reduction.
    """
    mask = inputs["mask"]
    x = jnp.where(mask[..., None], inputs["features"], 0.0)
    x = log1p_standardize(consts["features"], x)
    return {"scores": apply(x, inputs["mask"], train=train)}


def serving(cfg: Mapping[str, Any], features: Mapping[str, Any]) -> Serving:
    """Model, forward and the export signature from config and feature facts (no data).

    ``features``: ``{"num_features": F}``, the width of the LETOR feature vectors.
    """
    import hydra

    num_features = int(features["num_features"])
    signature = Signature(
        inputs={"features": (("batch", "list", num_features), np.float32),
                "mask": (("batch", "list"), np.bool_)},
        outputs={"scores": "float32 [batch, list]: higher ranks first; masked items score -1e9"},
        predict=lambda apply, consts, x: forward(apply, consts, x, train=False))
    return Serving(model=hydra.utils.instantiate(cfg["model"]), forward=forward,
                   signatures={"serving_default": signature})


def _train_chunks(store, rows: int = 65536):
    """Training features in chunks of about ``rows`` docs (for streaming transform fits)."""
    buf, n = [], 0
    for i in range(len(store)):
        f, _ = store.query(i)
        buf.append(np.asarray(f, np.float32))
        n += len(f)
        if n >= rows:
            yield np.concatenate(buf)
            buf, n = [], 0
    if buf:
        yield np.concatenate(buf)


MAX_REFERENCE_DOCS = 20_000


def reference_lists(store, max_docs: int = MAX_REFERENCE_DOCS, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """A split's lists as a client sends them (``features [lists, L, F]``, ``mask [lists, L]``,
    padded to the longest list taken) and their graded labels (``label [lists, L]``): every
    list, or a seeded sample of whole lists holding at most ``max_docs`` documents (at least
    one list), in split order."""
    sizes = np.asarray(store.list_sizes)
    order = np.random.default_rng(seed).permutation(len(sizes))
    take = order[:max(1, int(np.searchsorted(np.cumsum(sizes[order]), max_docs, "right")))]
    take = np.sort(take) if len(sizes) else take
    width = max(1, int(sizes[take].max(initial=0)))
    lists_ = [lists.pad_list(*store.query(int(i)), width) for i in take]
    return {k: np.stack([x[k] for x in lists_]) for k in ("features", "mask", "label")}


def build_ranking_task(cfg: Mapping[str, Any]) -> Task:
    import hydra  # config-time only: forward() and the metrics import without it

    data_cfg, trainer_cfg = cfg["data"], cfg["trainer"]
    name = "letor" if data_cfg.get("path") else data_cfg["name"]
    if name == "letor" and not data_cfg.get("path"):
        raise ValueError("data=letor needs data.path=<a LETOR fold folder (train.txt, vali.txt, "
                         "test.txt) or a single LETOR file>")
    splits = load_ranking_splits(name, path=data_cfg.get("path"),
                                 num_features=data_cfg.get("num_features"),
                                 valid_fraction=data_cfg.get("valid_fraction", 0.2),
                                 test_fraction=data_cfg.get("test_fraction", 0.2),
                                 seed=data_cfg.get("seed", 0),
                                 on_invalid=data_cfg.get("on_invalid", "error"),
                                 max_label=data_cfg.get("max_label", 4))
    train = splits["train"]
    num_features = train.num_features
    consts = {"features": fit_log1p_standardize(_train_chunks(train), num_features)}

    features = {"num_features": num_features}
    parts = serving(cfg, features)
    loss = hydra.utils.instantiate(cfg["loss"])
    metric_names = list(cfg["task"].get("metrics", ["ndcg@10"]))
    per_list = {n: ranking_metric(n) for n in metric_names}
    target = cfg["task"].get("target_metric", "ndcg@10")
    if target not in per_list:
        raise ValueError(f"task.target_metric={target!r} is not among task.metrics={metric_names}")

    def loss_fn(outputs, batch):
        labels = jnp.where(batch["mask"], batch["label"], 0.0)  # padding may hold anything
        return loss(outputs["scores"], labels, where=batch["mask"]), {}

    metrics = {n: PerExampleMean(lambda out, batch, fn=fn: fn(
        out["scores"], jnp.where(batch["mask"], batch["label"], 0.0), where=batch["mask"],
        reduce_fn=None))
        for n, fn in per_list.items()}

    list_size = data_cfg.get("list_size", 128)
    check(isinstance(list_size, int) and list_size >= 1, "data.list_size", list_size,
          "an integer >= 1 (documents per training list)")
    batch_size, eval_batch = int(trainer_cfg["batch_size"]), int(trainer_cfg["eval_batch_size"])
    eval_sizes = {s: lists.eval_list_size(store) for s, store in splits.items()}

    def train_batches(seed: int, start_step: int):
        return lists.train_batches(train, list_size=list_size, batch_size=batch_size, seed=seed,
                                   start_step=start_step,
                                   num_threads=int(data_cfg.get("num_threads", 2)))

    eval_splits = {s: functools.partial(lists.eval_batches, store, batch_size=eval_batch,
                                        list_size=eval_sizes[s])
                   for s, store in splits.items() if s != "train" and len(store)}
    example = lists.pad_list(*train.query(0), list_size, np.random.default_rng(0))
    example_batch = {k: v[None] for k, v in example.items()}
    info = {"dataset": name, "num_features": num_features,
            "list_size_train": list_size, "list_size_eval": eval_sizes,
            "split": "LETOR fold files where given; otherwise queries split at random by a seeded "
                     "rule (grouped: a query's documents stay together)",
            **{f"{s}_queries": len(st) for s, st in splits.items()},
            **{f"{s}_docs": int(np.sum(st.list_sizes)) for s, st in splits.items()}}
    valid = splits.get("valid")
    reference_inputs = (functools.partial(reference_lists, valid)
                        if valid is not None and len(valid) else None)
    return Task(
        name="ranking", model=parts.model, consts=consts, forward=parts.forward, loss_fn=loss_fn,
        metrics=metrics,
        example_weight=lambda batch: jnp.any(batch["mask"], -1).astype(jnp.float32),
        train_batches=train_batches, eval_splits=eval_splits, example_batch=example_batch,
        input_keys=("features", "mask"), signatures=parts.signatures,
        serving="mlsd_jax.tasks.ranking:serving", features=features,
        serving_examples={"serving_default": {k: example_batch[k] for k in ("features", "mask")}},
        target_metric=target, target_mode="max", info=info, reference_inputs=reference_inputs)
