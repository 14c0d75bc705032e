"""Recommendation / CTR speed: our JAX models vs the same models written in PyTorch, interleaved.

    python benchmarks/recsys_throughput.py                 # all five models, ~8-10 min on 2 cores
    python benchmarks/recsys_throughput.py --models deepfm --repeats 5
    python benchmarks/recsys_throughput.py --quick --out-dir /tmp/r   # smoke run, about a minute

Models (JAX: the model zoo; torch: the same layers, widths, activations, dropout and loss,
written here):

* CTR, a Criteo-like setting: 26 id fields with the per-field cardinalities of the Criteo Kaggle
  set (as DLRM lists them) capped at 100,000 rows (840,543 ids in all), 13 numeric fields,
  embeddings of 16 over :class:`mlsd_jax.models.ctr.FieldEmbedding` (39 fields; the id fields'
  rows in one stacked table with per-field row offsets plus a 1-wide first-order table stacked
  the same way, ``x * v_f`` per number). ``deepfm``
  (:class:`~mlsd_jax.models.ctr.DeepFM`, MLP 400-400-400), ``wide_deep``
  (:class:`~mlsd_jax.models.ctr.WideDeep`, MLP 400-400-400), ``dcn_v2``
  (:class:`~mlsd_jax.models.ctr.DCNv2`, 3 full-rank cross layers, deep 400-400 stacked);
  dropout and the rest from ``configs/ctr/model/``. Loss: the CTR task's weighted sigmoid
  cross-entropy (``mlsd_jax.tasks.ctr.binary_cross_entropy``).
* MovieLens-1M-sized recommendation: 6,040 users and 3,706 items (+ the padding and OOV ids),
  embeddings of 64, configs from ``configs/recommendation/model/``. ``neumf``
  (:class:`~mlsd_jax.models.recsys.NeuMF`): pointwise log loss over the positive and 4 sampled
  negatives per user (``BCELoss``); ``two_tower`` (:class:`~mlsd_jax.models.recsys.TwoTower`,
  user tower over id, age, gender, occupation and 50 history items, item tower over id, year
  and up to 8 genres; ``id_dropout`` 0.05): in-batch sampled softmax with log-Q correction and
  accidental positives masked (``InBatchSoftmaxLoss``).

Data: simulated. Ids are drawn from Zipf-like distributions (exponent 1.05; hot ids first),
numbers from a standard normal, clicks with probability 0.25; the speed of a step does not depend
on the values. Batches of 4,096 examples for training (``--batch``); a pool of batches is staged
on the device beforehand and cycled through, so the figures are compute, not host transfers.

Arms, all with AdamW (``OptimConfig`` defaults: lr 1e-3, warmup + cosine, weight decay 1e-4 on
kernels only, not on tables or biases) and global-norm clipping 1.0:

* ``jax``: the framework's ``Trainer.train_step`` (jitted, state donated) and the jitted
  ``predict_fn`` of the serving signature; ``jax_sparse``: the same with
  ``optim.embedding={name: rowwise_adagrad, sparse: true}`` (tables updated row by row, only the
  looked-up rows, :mod:`mlsd_jax.training.sparse`);
* torch ``eager`` (fused AdamW) and ``compile``: the WHOLE step (forward, loss, backward,
  clipping, AdamW) in ``torch.compile`` (``dynamic=False``, inductor ``fallback_random=True``;
  CUDA graphs via ``mode="reduce-overhead"`` on GPU); torch ``sparse``: eager,
  ``nn.Embedding(sparse=True)`` tables updated by the same row-wise Adagrad written over the
  coalesced sparse gradients (one accumulator per row), fused AdamW for the rest, clipping over
  both together, as ``jax_sparse`` does.

Same architecture, checked: before timing, the torch worker copies the parameters of each JAX
model (at the ``--quick`` sizes) into its torch peer and compares their outputs on the same
inputs, out-of-vocabulary ids included; it also compares the torch losses with mlsd_jax's on
random inputs. Both results go into the notes; parameter counts are compared at full size.

Measured: training examples/s (steps/s x batch) and inference latency (p50/p99 per call, each
call synchronised) at batch 1 and 256: click probabilities for the CTR models and NeuMF (one
candidate per user), the user tower's query vector for the two-tower model (item vectors are
precomputed for retrieval). Protocol as ``benchmarks/ranking_throughput.py``
(``benchmarks/_harness.py``): all arms set up and compiled first, then blocks of each arm in
turn for several rounds; medians with min-max over rounds; ratios JAX / torch with the spread of
the per-round paired ratios; the torch peer in a child process. Results go to
``benchmarks/results/recsys_throughput_<device>.{json,md}`` (``--out-dir`` to change).

``--quick`` (what ``tests/test_benchmarks.py`` runs): 4 id fields and 2 numbers in the CTR
models, tables of at most 1,000 rows, MLPs of 16, 102 users and 52 items, batch 64, one short
round; arms ``jax``, torch ``eager``, and the sparse arms for ``deepfm`` and ``two_tower``; no
``torch.compile`` (a cold compile alone outlasts the quick budget) and no parity check.

PyTorch is optional: without it the torch rows are skipped with the reason. The script imports
neither hydra, omegaconf, grain nor tensorflow.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (ROOT, RESULTS, JaxArm, RemoteArm, TorchArm, best_of,  # noqa: E402
                      busy_cores, device_info, device_line, fmt, host_notes, load_line,
                      precision, ratio_cell, ratios, read_model_file, serve_torch, start_torch,
                      time_arms, torch_adamw, torch_hello, torch_worker_start, versions,
                      versions_line, warmup_cosine, write_results)

sys.path.insert(0, str(ROOT))

MODELS = ("deepfm", "wide_deep", "dcn_v2", "neumf", "two_tower")
CTR_MODELS = ("deepfm", "wide_deep", "dcn_v2")
JAX_ARMS = ("jax", "jax_sparse")
TORCH_MODES = ("eager", "compile", "sparse")
SPARSE_ARMS = ("jax_sparse", "sparse")  # same forward as the dense arms: training timed only
QUICK_SPARSE_MODELS = ("deepfm", "two_tower")  # --quick: one model per family of tables
INFER_SIZES = (1, 256)
SCHEDULE_STEPS = 10_000  # length of the cosine schedule (only its shape matters here)
GOAL_RATIO = 1.5         # training throughput, JAX / the faster torch arm
GOAL_GPU_EXAMPLES = 1_000_000  # DeepFM training examples/s on a GPU
CONFIG_FILES = {"deepfm": "ctr/model/deepfm.yaml", "wide_deep": "ctr/model/wide_deep.yaml",
                "dcn_v2": "ctr/model/dcn_v2.yaml", "neumf": "recommendation/model/neumf.yaml",
                "two_tower": "recommendation/model/two_tower.yaml"}
SPARSE_OPTIM = {"name": "rowwise_adagrad", "sparse": True}

# Criteo Kaggle per-field cardinalities (C1..C26, as listed by DLRM), capped at 100,000 rows as
# hashing to 1e5 buckets would.
CRITEO_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683,
                        8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15,
                        286181, 105, 142572)
ZIPF_EXPONENT = 1.05
CLICK_RATE = 0.25
NEGATIVES = 4        # NeuMF: sampled negatives per positive (BCELoss)
USER_FIELDS = ("age", "gender", "occupation")
ITEM_FIELDS = ("year",)
ITEM_MULTI_FIELDS = ("genres",)
USER_KEYS = ("user_id", "history", "history/mask", *USER_FIELDS)
ITEM_SIDE = ("year", "genres")  # item side fields, read from the item table by id


# ------------------------------------------------------------------------------------- config


def sizes(quick: bool) -> dict:
    """Shapes of the simulated data and the width overrides of the models (ids include the
    recommendation vocabularies' padding and OOV ids 0 and 1)."""
    if quick:
        return {"ctr_fields": 4, "numeric": 2, "ctr_cap": 1000, "embed_dim": 4,
                "ctr_hidden": (16, 16), "dcn_hidden": (16,), "users": 102, "items": 52,
                "rec_embed": 8, "rec_hidden": (16, 8), "tower_hidden": (16,), "field_dim": 4,
                "history": 10, "genres_len": 3,
                "side": {"age": 12, "gender": 4, "occupation": 23, "year": 12, "genres": 20}}
    return {"ctr_fields": 26, "numeric": 13, "ctr_cap": 100_000, "embed_dim": 16,
            "ctr_hidden": (400, 400, 400), "dcn_hidden": (400, 400), "users": 6040 + 2,
            "items": 3706 + 2, "rec_embed": 64, "rec_hidden": None, "tower_hidden": None,
            "field_dim": None, "history": 50, "genres_len": 8,
            # 10 training-quantile buckets of age and year (configs/recommendation/data) + 2
            "side": {"age": 12, "gender": 4, "occupation": 23, "year": 12, "genres": 20}}


def model_config(name: str, sz: dict) -> dict:
    """The model's config file with this benchmark's widths over it."""
    cfg = read_model_file(ROOT / "configs" / CONFIG_FILES[name])
    if name in CTR_MODELS:
        cfg.update(embed_dim=sz["embed_dim"],
                   hidden=sz["dcn_hidden"] if name == "dcn_v2" else sz["ctr_hidden"])
        if name == "dcn_v2":
            cfg.update(num_cross=3, structure="stacked", low_rank=None)
    elif name == "neumf":
        cfg.update(embed_dim=sz["rec_embed"], mlp_embed_dim=sz["rec_embed"])
        if sz["rec_hidden"]:
            cfg["hidden"] = sz["rec_hidden"]
    else:
        cfg["embed_dim"] = sz["rec_embed"]
        if sz["tower_hidden"]:
            cfg["hidden"] = sz["tower_hidden"]
        if sz["field_dim"]:
            cfg["field_dim"] = sz["field_dim"]
    return cfg


def embedding_l2() -> float:
    """The CTR task's L2 penalty on the embedding rows each example reads
    (``task.embedding_l2`` in ``configs/task/ctr.yaml``)."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "task" / "ctr.yaml").read_text()) or {}
    return float((cfg.get("task") or {}).get("embedding_l2", 0.0))


def cardinalities(name: str, sz: dict) -> dict[str, int]:
    if name in CTR_MODELS:
        return {f"C{k + 1}": min(c, sz["ctr_cap"])
                for k, c in enumerate(CRITEO_CARDINALITIES[:sz["ctr_fields"]])}
    out = {"user_id": sz["users"], "item_id": sz["items"]}
    if name == "two_tower":
        out.update(sz["side"])
    return out


def run_settings(args, on_gpu: bool) -> dict:
    """Time budgets: a block of timed steps lasts about ``train_target_s``, a block of inference
    calls about ``infer_target_s``; every arm runs ``repeats`` blocks of each."""
    if args.quick:
        s = dict(repeats=1, train_target_s=0.15, infer_target_s=0.05, infer_min_calls=3)
    elif on_gpu:
        s = dict(repeats=5, train_target_s=0.5, infer_target_s=0.3, infer_min_calls=20)
    else:
        s = dict(repeats=3, train_target_s=0.6, infer_target_s=0.2, infer_min_calls=5)
    if args.repeats:
        s["repeats"] = args.repeats
    s.update(warmup_steps=1 if args.quick else 2, max_steps=2000, infer_max_calls=2000,
             pool=args.pool, infer_sizes=INFER_SIZES)
    return s


# --------------------------------------------------------------------------------------- data


def zipf_ids(rng, n: int, shape, low: int = 0) -> np.ndarray:
    """Ids in ``[low, n)`` with ``P(low + k) ~ (k + 1)^-ZIPF_EXPONENT`` (hot ids first)."""
    p = np.arange(1, n - low + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(p / p.sum())
    return (low + np.minimum(np.searchsorted(cdf, rng.random(shape)), n - low - 1)).astype(np.int32)


def item_log_q(n_items: int) -> np.ndarray:
    """``log q(item)`` of the Zipf law the positives are drawn from (the log-Q correction's
    sampling probability; padding and OOV ids get the smallest)."""
    p = np.arange(1, n_items - 1, dtype=np.float64) ** -ZIPF_EXPONENT
    logq = np.log(p / p.sum())
    return np.concatenate([[logq.min(), logq.min()], logq]).astype(np.float32)


def items_by_id(table: dict, ids, xp) -> dict:
    """Item ids with their side fields gathered from the item table (ids outside the table read
    the OOV row; genre 0 is padding), as the recommendation task's ``FeatureView.items_by_id``
    does in the forward. ``xp``: ``jax.numpy`` or ``torch``."""
    rows = table["year"].shape[0]
    safe = xp.where((ids >= 0) & (ids < rows), ids, 1)
    genres = table["genres"][safe]
    return {"item_id": ids, "year": table["year"][safe], "genres": genres,
            "genres/mask": genres > 0}


class Simulator:
    """Simulated batches of one model, the same for a seed in the parent and the worker:
    ``jax(rows)`` (the model's input keys plus ``label`` / ``weight``) and ``torch(rows)``
    (CTR ids and numbers stacked into ``ids [B, 26]`` int64 and ``dense [B, 13]``)."""

    def __init__(self, name: str, sz: dict, seed: int = 0):
        self.name, self.sz = name, sz
        self.cards = cardinalities(name, sz)
        # FieldEmbedding's order of the numeric fields: by name
        self.numeric = sorted(f"I{k + 1}" for k in range(sz["numeric"]))
        self.rng = np.random.default_rng(seed)
        if name == "two_tower":  # per-user and per-item side fields, gathered by id
            r, side = self.rng, sz["side"]
            self.user_side = {f: r.integers(2, side[f], sz["users"]).astype(np.int32)
                              for f in USER_FIELDS}
            genres = r.integers(2, side["genres"], (sz["items"], sz["genres_len"]))
            valid = np.arange(sz["genres_len"])[None, :] < r.integers(1, 4, (sz["items"], 1))
            self.item_table = {"year": r.integers(2, side["year"], sz["items"]).astype(np.int32),
                               "genres": np.where(valid, genres, 0).astype(np.int32)}

    def jax(self, rows: int) -> dict:
        r, sz = self.rng, self.sz
        if self.name in CTR_MODELS:
            out = {f: zipf_ids(r, c, rows) for f, c in self.cards.items()}
            out.update({f"I{k + 1}": r.standard_normal(rows).astype(np.float32)
                        for k in range(sz["numeric"])})
            out["label"] = (r.random(rows) < CLICK_RATE).astype(np.float32)
        elif self.name == "neumf":
            positive = zipf_ids(r, sz["items"], (rows, 1), low=2)
            negatives = r.integers(2, sz["items"], (rows, NEGATIVES)).astype(np.int32)
            out = {"user_id": r.integers(2, sz["users"], rows).astype(np.int32),
                   "item_id": np.concatenate([positive, negatives], axis=1)}
        else:
            users = r.integers(2, sz["users"], rows).astype(np.int32)
            items = zipf_ids(r, sz["items"], rows, low=2)
            lengths = r.integers(1, sz["history"] + 1, (rows, 1))
            out = {"user_id": users, "history": zipf_ids(r, sz["items"], (rows, sz["history"]), 2),
                   "history/mask": np.arange(sz["history"])[None, :] < lengths,
                   **{f: self.user_side[f][users] for f in USER_FIELDS},
                   "item_id": items}
        out["weight"] = np.ones(rows, np.float32)
        return out

    def torch(self, batch: dict) -> dict:
        if self.name not in CTR_MODELS:
            return batch
        out = {"ids": np.stack([batch[f] for f in self.cards], 1).astype(np.int64),
               "dense": np.stack([batch[f] for f in self.numeric], 1)}
        return {**out, **{k: batch[k] for k in ("label", "weight") if k in batch}}

    def infer_inputs(self, batch: dict) -> dict:
        """The serving inputs of a batch: every input of a CTR model, (user, one candidate) for
        NeuMF, the user tower's inputs for the two-tower model."""
        if self.name in CTR_MODELS:
            return {k: v for k, v in batch.items() if k not in ("label", "weight")}
        if self.name == "neumf":
            return {"user_id": batch["user_id"], "item_id": batch["item_id"][:, :1]}
        return {k: batch[k] for k in USER_KEYS}


def make_data(name: str, sz: dict, batch: int, cfg: dict) -> dict:
    """``{"train": [batches], "infer": {size: inputs}}`` in the JAX layout (``Simulator.torch``
    turns each into the torch layout)."""
    sim = Simulator(name, sz)
    return {"sim": sim, "train": [sim.jax(batch) for _ in range(cfg["pool"])],
            "infer": {b: sim.infer_inputs(sim.jax(b)) for b in cfg["infer_sizes"]}}


# ---------------------------------------------------------------------------------------- JAX


def make_task(name: str, model, example_batch: dict, sz: dict):
    """The task for timing, built by hand (no hydra, no data pipeline): the model's forward,
    the task's loss, a ``serving_default`` signature; nothing to evaluate."""
    import jax
    import jax.numpy as jnp

    from mlsd_jax.models.recsys import BCELoss, InBatchSoftmaxLoss
    from mlsd_jax.tasks.base import Signature, Task
    from mlsd_jax.tasks.ctr import binary_cross_entropy

    consts: dict = {}
    if name in CTR_MODELS:
        input_keys = tuple(k for k in example_batch if k not in ("label", "weight"))
        l2_weight = embedding_l2()

        def forward(apply, consts, inputs, *, train):
            logit, l2 = apply(inputs, train=train, with_l2=True)
            return {"logit": logit, "prob": jax.nn.sigmoid(logit), "embedding_l2": l2}

        def loss_fn(outputs, batch):
            w = batch["weight"]
            l2 = jnp.sum(w * outputs["embedding_l2"]) / jnp.maximum(jnp.sum(w), 1e-9)
            return binary_cross_entropy(outputs["logit"], batch["label"], w) + l2_weight * l2, {}

        predict = lambda apply, consts, x: forward(apply, consts, x, train=False)  # noqa: E731
        spec = {k: (("batch",), np.asarray(v).dtype) for k, v in example_batch.items()
                if k in input_keys}
        outputs = {"prob": "float32 [batch]: click probability"}
    elif name == "neumf":
        input_keys = ("user_id", "item_id")

        def forward(apply, consts, inputs, *, train):
            return {"scores": apply({"user_id": inputs["user_id"]},
                                    {"item_id": inputs["item_id"]}, train=train)}

        loss_fn = BCELoss(num_negatives=NEGATIVES)

        def predict(apply, consts, x):
            return {"prob": jax.nn.sigmoid(forward(apply, consts, x, train=False)["scores"][:, 0])}

        spec = {"user_id": (("batch",), np.int32), "item_id": (("batch", "candidates"), np.int32)}
        outputs = {"prob": "float32 [batch]: interaction probability of the candidate"}
    else:
        input_keys = USER_KEYS + ("item_id",)
        consts = {"item_log_q": item_log_q(sz["items"]), "items": Simulator(name, sz).item_table}

        def forward(apply, consts, inputs, *, train):
            ids = inputs["item_id"]
            u = apply({k: inputs[k] for k in USER_KEYS}, train=train, method="user_vectors")
            v = apply(items_by_id(consts["items"], ids, jnp), train=train, method="item_vectors")
            return {"user": u, "item": v, "item_log_q": jnp.take(consts["item_log_q"], ids)}

        loss_fn = InBatchSoftmaxLoss()

        def predict(apply, consts, x):
            return {"user": apply({k: x[k] for k in USER_KEYS}, method="user_vectors")}

        spec = {k: (("batch",) + (("history",) if k.startswith("history") else ()),
                    np.asarray(example_batch[k]).dtype) for k in USER_KEYS}
        outputs = {"user": "float32 [batch, embed]: query vector"}
    names = {k: k.replace("/", "_") for k in spec}
    signature = Signature(inputs={names[k]: v for k, v in spec.items()}, encoded=spec,
                          outputs=outputs, predict=predict)
    return Task(
        name="recsys_throughput", model=model, consts=consts, forward=forward, loss_fn=loss_fn,
        metrics={}, example_weight=lambda b: jnp.asarray(b["weight"]),
        train_batches=lambda seed, start: iter(()), eval_splits={},
        example_batch={k: v[:1] for k, v in example_batch.items()}, input_keys=input_keys,
        signatures={"serving_default": signature}, serving="", target_metric="loss")


def build_model(name: str, sz: dict):
    from mlsd_jax.models.ctr import DCNv2, DeepFM, WideDeep
    from mlsd_jax.models.recsys import NeuMF, TwoTower

    cfg = model_config(name, sz)
    cards = cardinalities(name, sz)
    if name == "two_tower":
        return TwoTower(cards, user_fields=USER_FIELDS, item_fields=ITEM_FIELDS,
                        item_multi_fields=ITEM_MULTI_FIELDS, **cfg)
    cls = {"deepfm": DeepFM, "wide_deep": WideDeep, "dcn_v2": DCNv2, "neumf": NeuMF}[name]
    return cls(cards, **cfg)


def jax_arm(name: str, sparse: bool, data: dict, sz: dict, batch: int) -> JaxArm:
    from mlsd_jax.training.optim import OptimConfig

    model = build_model(name, sz)
    task = make_task(name, model, data["train"][0], sz)
    optim = OptimConfig(embedding=SPARSE_OPTIM) if sparse else OptimConfig()
    return JaxArm(task, optim, batch, data["train"], data["infer"], SCHEDULE_STEPS)


# -------------------------------------------------------------------------------------- torch


def table_rows(num: int) -> int:
    """Rows of an mlsd_jax ``Embedding`` for ``num`` ids: one OOV row, rounded up to 8."""
    from mlsd_jax.models.embedding import table_rows as rows

    return rows(num)


def torch_modules():
    """The torch peers, defined lazily so that the script runs without torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def mlp(d_in, hidden, dropout, out=None):
        layers = []
        for w in hidden:
            layers += [nn.Linear(d_in, w), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            d_in = w
        if out is not None:
            layers.append(nn.Linear(d_in, out))
        return nn.Sequential(*layers)

    class Table(nn.Module):
        """``mlsd_jax.models.Embedding``: ids outside ``[0, num)`` read the OOV row."""

        def __init__(self, num, dim, sparse):
            super().__init__()
            self.num = num
            self.table = nn.Embedding(table_rows(num), dim, sparse=sparse)

        def forward(self, ids):
            return self.table(torch.where((ids >= 0) & (ids < self.num), ids, self.num))

    class Fields(nn.Module):
        """``FieldEmbedding``: one table per id field (with its OOV row, rows rounded up to 8;
        held in one tensor with row offsets, one lookup for all fields), ``x * v_f`` per
        number, the first-order term ``s * (b + sum_f w_f(ids) + x @ w)`` (``s``:
        ``linear_scale``) and each row's squared norm of the id embeddings it read."""

        def __init__(self, cards, num_numeric, dim, sparse, linear=True, linear_scale=1.0):
            super().__init__()
            rows = [table_rows(c) for c in cards]
            self.register_buffer("card", torch.tensor(cards))
            self.register_buffer("offset", torch.tensor(np.cumsum([0] + rows[:-1])))
            self.embed = nn.Embedding(sum(rows), dim, sparse=sparse)
            self.numeric = nn.Parameter(torch.randn(num_numeric, dim))  # LeCun, fan-in 1
            self.has_linear, self.linear_scale = linear, linear_scale
            if linear:
                self.linear = nn.Embedding(sum(rows), 1, sparse=sparse)
                self.bias = nn.Parameter(torch.zeros(1))
                self.linear_numeric = nn.Parameter(torch.randn(num_numeric, 1)
                                                   / num_numeric ** 0.5)

        def forward(self, ids, dense):
            ids = torch.where((ids >= 0) & (ids < self.card), ids, self.card) + self.offset
            emb = self.embed(ids)
            fields = torch.cat([emb, dense[:, :, None] * self.numeric], dim=1)
            l2 = (emb * emb).sum((1, 2))
            if not self.has_linear:
                return fields, torch.zeros_like(l2), l2
            s = self.linear_scale
            wide = s * self.linear(ids)[..., 0]
            linear = s * self.bias + wide.sum(1) + s * (dense @ self.linear_numeric)[:, 0]
            return fields, linear, l2 + (wide * wide).sum(1)

    class DeepFM(nn.Module):
        """DeepFM (``fm=True``) or Wide & Deep: ``(logit, l2)``."""

        def __init__(self, cards, num_numeric, sparse, embed_dim, hidden, dropout,
                     embedding_dropout, layer_norm, linear_scale=1.0, fm=True):
            super().__init__()
            self.fields = Fields(list(cards.values()), num_numeric, embed_dim, sparse,
                                 linear_scale=linear_scale)
            self.deep = mlp((len(cards) + num_numeric) * embed_dim, hidden, dropout, out=1)
            self.fm = fm

        def forward(self, ids, dense):
            fields, linear, l2 = self.fields(ids, dense)
            out = linear + self.deep(fields.flatten(1))[:, 0]
            if self.fm:
                total = fields.sum(1)
                out = out + 0.5 * (total * total - (fields * fields).sum(1)).sum(-1)
            return out, l2

    class DCNv2(nn.Module):
        """DCN-v2, stacked, full-rank cross layers: ``(logit, l2)``."""

        def __init__(self, cards, num_numeric, sparse, embed_dim, num_cross, low_rank, hidden,
                     structure, dropout, embedding_dropout, layer_norm):
            super().__init__()
            self.fields = Fields(list(cards.values()), num_numeric, embed_dim, sparse,
                                 linear=False)
            width = (len(cards) + num_numeric) * embed_dim
            self.cross = nn.ModuleList([nn.Linear(width, width) for _ in range(num_cross)])
            self.deep = mlp(width, hidden, dropout)
            self.head = nn.Linear(hidden[-1], 1)

        def forward(self, ids, dense):
            fields, _, l2 = self.fields(ids, dense)
            x0 = x = fields.flatten(1)
            for layer in self.cross:
                x = x0 * layer(x) + x
            return self.head(self.deep(x))[:, 0], l2

    def drop_ids(ids, rate, training):
        """Known ids replaced by the OOV id 1 with probability ``rate`` (training only)."""
        if not training or rate <= 0:
            return ids
        return torch.where((torch.rand(ids.shape, device=ids.device) < rate) & (ids > 1), 1, ids)

    class NeuMF(nn.Module):
        def __init__(self, cards, embed_dim, mlp_embed_dim, hidden, dropout, id_dropout, sparse):
            super().__init__()
            users, items = cards["user_id"], cards["item_id"]
            self.gmf_user = Table(users, embed_dim, sparse)
            self.gmf_item = Table(items, embed_dim, sparse)
            self.mlp_user = Table(users, mlp_embed_dim, sparse)
            self.mlp_item = Table(items, mlp_embed_dim, sparse)
            self.tower = mlp(2 * mlp_embed_dim, hidden, dropout)
            self.out = nn.Linear(embed_dim + hidden[-1], 1)
            self.id_dropout = id_dropout

        def forward(self, user, item):
            g_user = self.gmf_user(drop_ids(user, self.id_dropout, self.training))
            g = g_user[:, None, :] * self.gmf_item(item)
            p = self.mlp_user(drop_ids(user, self.id_dropout, self.training))
            q = self.mlp_item(item)
            h = self.tower(torch.cat([p[:, None, :].expand(-1, q.shape[1], -1), q], -1))
            return self.out(torch.cat([g, h], -1))[..., 0]

    def masked_mean(x, mask):
        w = mask.to(x.dtype)
        return torch.einsum("...l,...ld->...d", w, x) / w.sum(-1, keepdim=True).clamp_min(1.0)

    def l2_normalize(x):
        return x * torch.rsqrt((x * x).sum(-1, keepdim=True).clamp_min(1e-12))

    class TwoTower(nn.Module):
        def __init__(self, cards, embed_dim, field_dim, hidden, dropout, temperature, id_dropout,
                     sparse):
            super().__init__()
            self.user = Table(cards["user_id"], embed_dim, sparse)
            self.item = Table(cards["item_id"], embed_dim, sparse)
            self.user_side = nn.ModuleDict({f: Table(cards[f], field_dim, sparse)
                                            for f in USER_FIELDS})
            self.item_side = nn.ModuleDict({f: Table(cards[f], field_dim, sparse)
                                            for f in ITEM_FIELDS + ITEM_MULTI_FIELDS})
            self.user_tower = mlp(2 * embed_dim + field_dim * len(USER_FIELDS), hidden, dropout,
                                  out=embed_dim)
            self.item_tower = mlp(embed_dim + field_dim * len(self.item_side), hidden, dropout,
                                  out=embed_dim)
            self.temperature, self.id_dropout = temperature, id_dropout

        def user_vectors(self, b):
            parts = [self.user(drop_ids(b["user_id"], self.id_dropout, self.training)),
                     masked_mean(self.item(b["history"]), b["history/mask"])]
            parts += [self.user_side[f](b[f]) for f in USER_FIELDS]
            return l2_normalize(self.user_tower(torch.cat(parts, -1))) / self.temperature

        def item_vectors(self, b):
            parts = [self.item(drop_ids(b["item_id"], self.id_dropout, self.training))]
            parts += [self.item_side[f](b[f]) for f in ITEM_FIELDS]
            parts += [masked_mean(self.item_side[f](b[f]), b[f"{f}/mask"])
                      for f in ITEM_MULTI_FIELDS]
            return l2_normalize(self.item_tower(torch.cat(parts, -1)))

    def bce(logit, label, weight):
        """``mlsd_jax.tasks.ctr.binary_cross_entropy``: weighted mean sigmoid cross-entropy."""
        per = F.binary_cross_entropy_with_logits(logit, label, reduction="none")
        return (weight * per).sum() / weight.sum().clamp_min(1e-9)

    def pointwise(scores, weight):
        """``mlsd_jax.models.recsys.BCELoss``: label 1 for column 0, 0 for the negatives."""
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1.0
        per = F.binary_cross_entropy_with_logits(scores, labels, reduction="none").mean(1)
        return (weight * per).sum() / weight.sum().clamp_min(1e-9)

    def in_batch(user, item, log_q, user_ids, item_ids, weight):
        """``mlsd_jax.models.recsys.InBatchSoftmaxLoss``: log-Q corrected in-batch softmax,
        accidental positives and padding rows masked."""
        logits = user @ item.T - log_q[None, :]
        off = ~torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        same = (item_ids[:, None] == item_ids[None, :]) | (user_ids[:, None] == user_ids[None, :])
        masked = ((weight[None, :] <= 0) | same) & off
        logits = logits.masked_fill(masked, -1e9)
        per = torch.logsumexp(logits, 1) - logits.diagonal()
        return (weight * per).sum() / weight.sum().clamp_min(1e-9)

    def init_like_jax(model, ctr: bool):
        """The JAX models' initial distributions, so the losses compare: LeCun-normal kernels
        and zero biases (``dense``), tables N(0, 0.05) (CTR) or Xavier-normal (recsys), zero
        first-order tables."""
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features ** -0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                if ctr:
                    nn.init.normal_(m.weight, std=0.05)
                else:
                    nn.init.xavier_normal_(m.weight)
            elif isinstance(m, Fields) and m.has_linear:
                nn.init.zeros_(m.linear.weight)
        return model

    return {"deepfm": DeepFM, "wide_deep": lambda *a, **k: DeepFM(*a, fm=False, **k),
            "dcn_v2": DCNv2, "neumf": NeuMF, "two_tower": TwoTower, "init": init_like_jax,
            "bce": bce, "pointwise": pointwise, "in_batch": in_batch}


def torch_model(name: str, sz: dict, modules: dict, sparse: bool):
    """The torch peer of ``name`` with its loss and predict functions: ``(model, loss, predict)``
    (``loss(batch)``, ``predict(inputs)`` in the layout of ``Simulator.torch``)."""
    import torch

    torch.manual_seed(0)
    cfg = model_config(name, sz)
    cards = cardinalities(name, sz)
    if name in CTR_MODELS:
        unsupported = {k: cfg[k] for k in ("embedding_dropout", "layer_norm", "low_rank",
                                           "id_dropout") if cfg.get(k)}
        if unsupported or cfg.get("structure", "stacked") != "stacked":
            raise NotImplementedError(f"the torch peer of {name} has no {unsupported or cfg}")
        model = modules["init"](modules[name](cards, sz["numeric"], sparse, **cfg), True)
        bce, l2_weight = modules["bce"], embedding_l2()

        def loss(b):
            logit, l2 = model(b["ids"], b["dense"])
            w = b["weight"]
            return bce(logit, b["label"], w) + l2_weight * (w * l2).sum() / w.sum().clamp_min(1e-9)

        return model, loss, lambda x: torch.sigmoid(model(x["ids"], x["dense"])[0])
    if name == "neumf":
        model = modules["init"](modules["neumf"](cards, sparse=sparse, **cfg), False)
        loss = modules["pointwise"]
        return (model, lambda b: loss(model(b["user_id"], b["item_id"]), b["weight"]),
                lambda x: torch.sigmoid(model(x["user_id"], x["item_id"])[:, 0]))
    model = modules["init"](modules["two_tower"](cards, sparse=sparse, **cfg), False)
    model.register_buffer("log_q", torch.from_numpy(item_log_q(sz["items"])))
    for f, values in Simulator(name, sz).item_table.items():
        model.register_buffer(f"item_{f}", torch.from_numpy(values))
    loss = modules["in_batch"]

    def items(ids):
        return items_by_id({f: getattr(model, f"item_{f}") for f in ITEM_SIDE}, ids, torch)

    return (model, lambda b: loss(model.user_vectors(b), model.item_vectors(items(b["item_id"])),
                                  model.log_q[b["item_id"]], b["user_id"], b["item_id"],
                                  b["weight"]),
            lambda x: model.user_vectors(x))


def param_groups(model, params=None) -> list[dict]:
    """AdamW groups as ``OptimConfig`` has them: weight decay on kernels (2-D weights that are
    not embedding tables), none on tables and biases."""
    from torch import nn

    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = list(model.parameters() if params is None else params)
    decay = [p for p in params if p.ndim >= 2 and id(p) not in tables]
    rest = [p for p in params if not (p.ndim >= 2 and id(p) not in tables)]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def use_sparse_rows(arm: TorchArm, loss, predict, ocfg, emb) -> TorchArm:
    """The ``sparse`` arm's step: sparse table gradients (``nn.Embedding(sparse=True)``),
    coalesced (repeated ids summed), clipped together with the dense gradients by their global
    norm; tables updated by row-wise Adagrad on the looked-up rows only (``acc[r] += mean_j
    g[r, j]^2``, ``table[r] -= lr * g[r] / (sqrt(acc[r]) + eps)``), the rest by fused AdamW;
    both learning rates on the warmup + cosine schedule, as ``jax_sparse``."""
    import torch
    from torch import nn

    model, clip = arm.model, ocfg.clip_norm
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    table_ids = {id(t) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in table_ids]
    opt, kind = torch_adamw(param_groups(model, dense), "eager", arm.device, ocfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, ocfg, SCHEDULE_STEPS) / ocfg.lr)
    accumulators = [torch.full((t.shape[0],), emb.initial_accumulator_value, device=arm.device)
                    for t in tables]
    counter = {"step": 0}

    def step(batch):
        opt.zero_grad(set_to_none=True)
        for t in tables:
            t.grad = None
        value = loss(batch)
        value.backward()
        with torch.no_grad():
            rows = [(t, acc, t.grad.coalesce()) for t, acc in zip(tables, accumulators)
                    if t.grad is not None]
            squares = [g.values().square().sum() for _, _, g in rows]
            squares += [p.grad.square().sum() for p in dense if p.grad is not None]
            norm = torch.stack(squares).sum().sqrt()
            scale = torch.clamp(clip / norm, max=1.0)
            for p in dense:
                if p.grad is not None:
                    p.grad.mul_(scale)
            opt.step()
            lr = warmup_cosine(counter["step"], ocfg, SCHEDULE_STEPS, emb.lr)
            for table, acc, g in rows:
                idx, grad = g.indices()[0], g.values() * scale
                acc_rows = acc[idx] + grad.square().mean(1)
                acc[idx] = acc_rows
                table.index_add_(0, idx, grad / (acc_rows.sqrt() + emb.eps)[:, None], alpha=-lr)
        counter["step"] += 1
        return value.detach()

    arm.step, arm.predict_fn, arm.after_step = step, predict, sched.step
    arm.optimizer_kind = (f"tables: row-wise Adagrad on coalesced sparse gradients (lr {emb.lr}); "
                          f"rest: {kind}")
    return arm


def torch_arm(name: str, mode: str, data: dict, sz: dict, device, modules: dict,
              single_tensor: bool = False) -> TorchArm:
    """One torch model in one arm, in the worker process."""
    from mlsd_jax.training.optim import OptimConfig

    ocfg = OptimConfig()
    sparse = mode == "sparse"
    model, loss, predict = torch_model(name, sz, modules, sparse)
    sim = data["sim"]
    arm = TorchArm(model, [sim.torch(b) for b in data["train"]],
                   {s: sim.torch(x) for s, x in data["infer"].items()}, device)
    if sparse:
        emb = OptimConfig(embedding=SPARSE_OPTIM).embedding
        return use_sparse_rows(arm, loss, predict, ocfg, emb)
    return arm.use_adamw(loss, predict, mode, ocfg, SCHEDULE_STEPS, params=param_groups(arm.model),
                         single_tensor=single_tensor)


def loss_check(modules: dict, torch, device) -> dict:
    """The torch losses against mlsd_jax's on the same random inputs (JAX on CPU)."""
    try:
        import jax.numpy as jnp

        from mlsd_jax.models.recsys import BCELoss, InBatchSoftmaxLoss
        from mlsd_jax.tasks.ctr import binary_cross_entropy

        rng = np.random.default_rng(7)
        t = lambda x: torch.from_numpy(np.asarray(x)).to(device)  # noqa: E731
        logit = rng.normal(size=64).astype(np.float32)
        label = (rng.random(64) < 0.3).astype(np.float32)
        weight = np.r_[np.ones(60), np.zeros(4)].astype(np.float32)  # padding rows
        scores = rng.normal(size=(16, 1 + NEGATIVES)).astype(np.float32)
        user = rng.normal(size=(16, 8)).astype(np.float32)
        item = rng.normal(size=(16, 8)).astype(np.float32)
        log_q = rng.normal(size=16).astype(np.float32)
        users = rng.integers(0, 6, 16).astype(np.int64)  # repeats: accidental positives
        items = rng.integers(0, 6, 16).astype(np.int64)
        w16 = weight[-16:]
        pairs = {
            "bce": (float(binary_cross_entropy(jnp.asarray(logit), jnp.asarray(label),
                                               jnp.asarray(weight))),
                    float(modules["bce"](t(logit), t(label), t(weight)))),
            "pointwise": (float(BCELoss(NEGATIVES)({"scores": jnp.asarray(scores)},
                                                   {"weight": jnp.asarray(w16)})[0]),
                          float(modules["pointwise"](t(scores), t(w16)))),
            "in_batch_softmax": (
                float(InBatchSoftmaxLoss()({"user": jnp.asarray(user), "item": jnp.asarray(item),
                                            "item_log_q": jnp.asarray(log_q)},
                                           {"user_id": jnp.asarray(users),
                                            "item_id": jnp.asarray(items),
                                            "weight": jnp.asarray(w16)})[0]),
                float(modules["in_batch"](t(user), t(item), t(log_q), t(users), t(items),
                                          t(w16))))}
        return {k: {"jax": a, "torch": b, "abs_diff": abs(a - b)} for k, (a, b) in pairs.items()}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def copy_jax_params(name: str, params, model, sz: dict) -> None:
    """Copies the JAX model's parameters into its torch peer (kernels transposed; the CTR
    field tables into their rows of the shared tensor, in field order)."""
    import torch
    from torch import nn

    def put(dst, value):
        with torch.no_grad():
            dst.copy_(torch.from_numpy(np.array(value)).reshape(dst.shape))

    def dense_layers(tree, modules):
        linears = [m for m in modules if isinstance(m, nn.Linear)]
        names = sorted((k for k in tree if k.startswith("Dense_")), key=lambda k: int(k[6:]))
        if len(names) != len(linears):
            raise ValueError(f"{len(names)} JAX Dense layers vs {len(linears)} torch Linear")
        for k, lin in zip(names, linears):
            put(lin.weight, np.asarray(tree[k]["kernel"]).T)
            put(lin.bias, tree[k]["bias"])

    if name in CTR_MODELS:
        f, fields = params["features"], model.fields
        # the same stacked layout: each field's rows at the same row offset in both
        put(fields.embed.weight, f["embed"]["embedding"])
        if fields.has_linear:
            put(fields.linear.weight, f["linear"]["embedding"])
            put(fields.bias, f["bias"])
            put(fields.linear_numeric, f["linear_numeric"]["kernel"])
        numeric = sorted(k for k in f if k.startswith("numeric_"))
        put(fields.numeric, np.concatenate([np.asarray(f[k]["kernel"]) for k in numeric]))
        if name == "dcn_v2":
            for k, layer in enumerate(model.cross):
                put(layer.weight, np.asarray(params["cross"][f"cross_{k}"]["kernel"]).T)
                put(layer.bias, params["cross"][f"cross_{k}"]["bias"])
            dense_layers(params["deep"], model.deep)
            put(model.head.weight, np.asarray(params["head"]["kernel"]).T)
            put(model.head.bias, params["head"]["bias"])
        else:
            dense_layers(params["deep"], model.deep)
    elif name == "neumf":
        for branch, users, items in (("gmf", model.gmf_user, model.gmf_item),
                                     ("mlp", model.mlp_user, model.mlp_item)):
            put(users.table.weight, params[branch]["user"]["embedding"])
            put(items.table.weight, params[branch]["item"]["embedding"])
        dense_layers(params["mlp"]["tower"], model.tower)
        put(model.out.weight, np.asarray(params["out"]["kernel"]).T)
        put(model.out.bias, params["out"]["bias"])
    else:
        put(model.user.table.weight, params["user"]["embedding"])
        put(model.item.table.weight, params["item"]["embedding"])
        for side, tables in (("user_side", model.user_side), ("item_side", model.item_side)):
            for field, table in tables.items():
                put(table.table.weight, params[side][field]["embedding"])
        dense_layers(params["user_tower"], model.user_tower)
        dense_layers(params["item_tower"], model.item_tower)


def parity_check(name: str, modules: dict, torch, device) -> dict:
    """Same parameters, same inputs, inference mode: the JAX model and its torch peer at small
    sizes; the largest absolute difference of their outputs (JAX on CPU)."""
    try:
        import jax

        # --quick sizes with enough fields that name order (C10 < C2) differs from field order
        sz = {**sizes(quick=True), "ctr_fields": 12, "numeric": 11}
        sim = Simulator(name, sz, seed=1)
        batch = sim.jax(16)
        batch = {k: np.where(v == v.flat[0], -3, v) if k in ("C1", "user_id") else v
                 for k, v in batch.items()}  # out-of-range ids read the OOV row
        model = build_model(name, sz)
        if name in CTR_MODELS:
            inputs = sim.infer_inputs(batch)
            args, kw = (inputs,), {}
        elif name == "neumf":
            args, kw = ({"user_id": batch["user_id"]}, {"item_id": batch["item_id"]}), {}
        else:
            args, kw = ({k: batch[k] for k in USER_KEYS},), {"method": "user_vectors"}
        params = jax.jit(lambda rng: model.init(rng, *args, **kw))(jax.random.key(3))["params"]
        if name == "two_tower":  # the item tower's variables come with its own call
            items = items_by_id(sim.item_table, batch["item_id"], np)
            params = {**params, **jax.jit(lambda rng: model.init(
                rng, items, method="item_vectors"))(jax.random.key(3))["params"]}
        params = jax.tree.map(np.asarray, nn_unbox(params))
        peer = torch_model(name, sz, modules, sparse=False)[0].to(device).eval()
        copy_jax_params(name, params, peer, sz)
        t = lambda x: torch.from_numpy(np.asarray(x)).to(device)  # noqa: E731
        apply = jax.jit(model.apply, static_argnames=("method", "with_l2"))
        with torch.no_grad():
            if name in CTR_MODELS:
                tb = sim.torch(batch)
                got = list(peer(t(tb["ids"]), t(tb["dense"])))
                want = list(apply({"params": params}, *args, with_l2=True))
            elif name == "neumf":
                got = [peer(t(batch["user_id"]).long(), t(batch["item_id"]).long())]
                want = [apply({"params": params}, *args)]
            else:
                tb = {k: t(v) for k, v in batch.items()}
                got = [peer.user_vectors(tb), peer.item_vectors({k: t(v) for k, v in items.items()})]
                want = [apply({"params": params}, args[0], method="user_vectors"),
                        apply({"params": params}, items, method="item_vectors")]
        diff = max(float(np.max(np.abs(np.asarray(w) - g.cpu().numpy())))
                   for w, g in zip(want, got))
        scale = max(float(np.max(np.abs(np.asarray(w)))) for w in want)
        return {"max_abs_diff": diff, "max_abs_output": scale}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def nn_unbox(tree):
    import flax.linen as nn

    return nn.meta.unbox(tree)


def torch_worker(args) -> None:
    """Child process: builds the torch arms on request and times blocks (see
    ``_harness.serve_torch``)."""
    out, torch, device = torch_worker_start()
    on_gpu = device.type == "cuda"
    cfg = run_settings(args, on_gpu)
    sz = sizes(args.quick)
    modules = torch_modules()
    data: dict = {}
    checks: dict = {}
    # Run while the parent compiles its JAX arms, and finished before any timing starts.
    checker = threading.Thread(target=lambda: checks.update(
        loss_check=loss_check(modules, torch, device),
        parity={} if args.quick else {m: parity_check(m, modules, torch, device)
                                      for m in MODELS}))
    checker.start()

    def setup(model: str, mode: str):
        checker.join()
        if model not in data:
            data.clear()  # one model's batches at a time
            data[model] = make_data(model, sz, args.batch, cfg)
        try:
            arm = torch_arm(model, mode, data[model], sz, device, modules)
            return arm, arm.train(1)
        except Exception:  # noqa: BLE001 -- the compiled multi-tensor AdamW on CPU
            if mode != "compile" or on_gpu:
                raise
            arm = torch_arm(model, mode, data[model], sz, device, modules, single_tensor=True)
            return arm, arm.train(1)

    def report_checks(_msg) -> dict:
        checker.join()
        return checks

    serve_torch(out, setup, torch_hello(torch, device), cfg, {"checks": report_checks})


def worker_args(args) -> list[str]:
    out = ["--batch", str(args.batch), "--pool", str(args.pool)]
    if args.repeats:
        out += ["--repeats", str(args.repeats)]
    return out + (["--quick"] if args.quick else [])


# ------------------------------------------------------------------------------------- report


def build_rows(results: dict) -> list[dict]:
    """One row per model and measurement: every arm's figures and the ratios JAX / torch."""
    rows = []
    tmodels = results["torch"].get("models", {})
    for name, j in results["jax"].items():
        t = tmodels.get(name, {}).get("rows", {})
        for key, jr in j["rows"]["jax"].items():
            metric = "steps_per_s" if key == "train" else "examples_per_s"
            te, tc, ts = (t.get(m, {}).get(key) for m in TORCH_MODES)
            js = j["rows"].get("jax_sparse", {}).get(key)
            rows.append({
                "model": name, "measurement": key,
                "batch": results["settings"]["batch"] if key == "train" else int(key.split("_")[1]),
                "jax": jr, "jax_sparse": js, "torch_eager": te, "torch_compile": tc,
                "torch_sparse": ts, "vs_eager": ratios(jr, te, metric),
                "vs_compile": ratios(jr, tc, metric),
                "vs_best_torch": ratios(jr, best_of([te, tc], metric), metric),
                "sparse_vs_torch_sparse": ratios(js, ts, metric),
                "ratio_metric": metric})
    return rows


def goals(rows: list[dict], plat: str) -> dict:
    """The targets this benchmark tracks: training at ``GOAL_RATIO`` x the faster torch arm
    (median ratio), and on GPU DeepFM above ``GOAL_GPU_EXAMPLES`` examples/s."""
    train = [r for r in rows if r["measurement"] == "train"]
    out = {"vs_faster_torch": {r["model"]: r["vs_best_torch"]["median_ratio"] >= GOAL_RATIO
                               for r in train if r["vs_best_torch"]},
           "gpu_deepfm": None}
    deepfm = next((r for r in train if r["model"] == "deepfm"), None)
    if plat != "cpu" and deepfm:
        out["gpu_deepfm"] = deepfm["jax"]["examples_per_s"] > GOAL_GPU_EXAMPLES
    return out


def _train_cell(r):
    if not r:
        return "—"
    per_step = r["examples_per_s"] / r["steps_per_s"]
    return (f"{fmt(r['examples_per_s'])} ex/s ({fmt(r['steps_per_s_min'] * per_step)}–"
            f"{fmt(r['steps_per_s_max'] * per_step)})")


def _infer_cell(r):
    if not r:
        return "—"
    return f"{fmt(r['p50_ms'])} / {fmt(r['p99_ms'])} ms"


def markdown(results: dict) -> str:
    d, s, t = results["device"], results["settings"], results["torch"]
    lines = [
        f"# Recommendation / CTR throughput: JAX (mlsd_jax) vs PyTorch — {d['tag']}",
        "",
        device_line(d, t),
        versions_line(results["versions"]),
        f"- precision: {results['precision']}",
        f"- data: {s['data']}",
        f"- models: {s['models_text']}",
        "- losses: the tasks' own — CTR: weighted sigmoid cross-entropy + "
        f"{s.get('embedding_l2', embedding_l2())} × the squared norm of the embedding rows each "
        "example reads (`task.embedding_l2`); NeuMF: pointwise log loss over the positive and "
        f"{NEGATIVES} negatives; two-tower: in-batch softmax with log-Q correction",
        f"- training: batch {s['batch']}, pool of {s['pool']} staged batches; AdamW (lr 1e-3, "
        "warmup + cosine, wd 1e-4 on kernels), grad clip 1.0. JAX: `Trainer.train_step`; "
        "torch.compile: the whole step (forward, backward, clipping, optimizer), "
        f"{t.get('compile_optimizer', '—')}. Sparse arms: row-wise Adagrad on the looked-up "
        "table rows only (JAX `optim.embedding.sparse=true`; torch `nn.Embedding(sparse=True)` "
        "+ the same row-wise Adagrad), AdamW for the rest",
        f"- timing: arms interleaved, {s['repeats']} rounds of ~{s['train_target_s']} s (train) "
        f"and ~{s['infer_target_s']} s (inference) blocks each; median (min–max over rounds); "
        "ratio = "
        "JAX / torch medians (min–max of the per-round paired ratios), > 1: JAX faster; "
        "\"faster torch\" pairs each round with the faster of eager and compile"
        + (" (--quick)" if s["quick"] else ""),
        load_line(results),
        "",
        "Training (examples/s):",
        "",
        "| model | JAX | torch eager | torch.compile | JAX / eager | JAX / compile | "
        "**JAX / faster torch** |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = results["rows"]
    for r in (r for r in rows if r["measurement"] == "train"):
        lines.append(f"| {r['model']} | {_train_cell(r['jax'])} | {_train_cell(r['torch_eager'])} "
                     f"| {_train_cell(r['torch_compile'])} | {ratio_cell(r['vs_eager'])} | "
                     f"{ratio_cell(r['vs_compile'])} | {ratio_cell(r['vs_best_torch'])} |")
    goals = results.get("goals", {})
    if goals.get("vs_faster_torch"):
        lines += ["", f"Goal, training at ≥ {GOAL_RATIO}× the faster torch arm: " + ", ".join(
            f"{m} {'met' if ok else 'not met'}" for m, ok in goals["vs_faster_torch"].items())
            + (f"; DeepFM above {GOAL_GPU_EXAMPLES:,} examples/s on GPU: "
               + ("met" if goals["gpu_deepfm"] else "not met")
               if goals.get("gpu_deepfm") is not None else "")]
    lines += ["", "Training with sparse embedding updates (examples/s):", "",
              "| model | JAX sparse | torch sparse | JAX sparse / torch sparse | "
              "JAX sparse / JAX dense |", "|---|---|---|---|---|"]
    for r in (r for r in rows if r["measurement"] == "train"):
        lines.append(f"| {r['model']} | {_train_cell(r['jax_sparse'])} | "
                     f"{_train_cell(r['torch_sparse'])} | "
                     f"{ratio_cell(r['sparse_vs_torch_sparse'])} | "
                     f"{ratio_cell(ratios(r['jax_sparse'], r['jax'], 'steps_per_s'))} |")
    lines += ["", "Inference latency p50 / p99 per call (each call synchronised):", "",
              "| model | batch | JAX | torch eager | torch.compile | examples/s JAX / eager | "
              "JAX / compile |", "|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["measurement"] != "train"):
        lines.append(f"| {r['model']} | {r['batch']} | {_infer_cell(r['jax'])} | "
                     f"{_infer_cell(r['torch_eager'])} | {_infer_cell(r['torch_compile'])} | "
                     f"{ratio_cell(r['vs_eager'])} | {ratio_cell(r['vs_compile'])} |")
    lines += ["", "| model | params JAX | params torch | first train step (compile) JAX / JAX "
              "sparse / eager / torch.compile / torch sparse, s |", "|---|---|---|---|"]
    for name, j in results["jax"].items():
        tm = t.get("models", {}).get(name, {})
        first = [j["rows"].get(a, {}).get("train", {}).get("first_call_s") for a in JAX_ARMS]
        first += [tm.get("rows", {}).get(m, {}).get("train", {}).get("first_call_s")
                  for m in TORCH_MODES]
        tp = tm.get("params")
        mark = "" if tp is None or tp == j["params"] else " (differs)"
        lines.append(f"| {name} | {j['params']:,} | {'—' if tp is None else f'{tp:,}'}{mark} | "
                     + " / ".join("—" if x is None else f"{x:.1f}" for x in first) + " |")
    if results["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def describe(sz: dict, batch: int) -> tuple[str, str]:
    """The data and model lines of the report."""
    ctr = cardinalities("deepfm", sz).values()
    data = (f"simulated (Zipf ids, exponent {ZIPF_EXPONENT}; normal numbers; click rate "
            f"{CLICK_RATE}); CTR: {len(ctr)} id fields with Criteo Kaggle cardinalities capped "
            f"at {sz['ctr_cap']:,} ({sum(ctr):,} ids), {sz['numeric']} numeric fields; "
            "recommendation: "
            f"{sz['users'] - 2:,} users, {sz['items'] - 2:,} items, NeuMF with {NEGATIVES} "
            f"sampled negatives per positive, two-tower with {sz['history']} history items; "
            f"training batch {batch} examples, inference batches "
            + ", ".join(map(str, INFER_SIZES)))
    models = "; ".join(f"{n} {model_config(n, sz)}" for n in MODELS)
    return data, models


# --------------------------------------------------------------------------------------- main


def bench_model(name: str, args, cfg: dict, sz: dict, peer, modes, jax_arms, notes: list):
    """Every arm of one model, interleaved. Returns ``(jax_result, torch_result)``."""
    if args.quick and name not in QUICK_SPARSE_MODELS:
        modes = [m for m in modes if m not in SPARSE_ARMS]
        jax_arms = [a for a in jax_arms if a not in SPARSE_ARMS]
    data = make_data(name, sz, args.batch, cfg)
    arms, first, infer_first, params = {}, {}, {}, None
    for a in jax_arms:
        arms[a] = jax_arm(name, a == "jax_sparse", data, sz, args.batch)
        first[a], infer_first[a] = arms[a].warm_up(
            {**cfg, "infer_sizes": ()} if a in SPARSE_ARMS else cfg)
        params = arms[a].params
        print(f"{a} {name}: ready (first step {first[a]:.1f} s)", flush=True)
    tarms = peer.setup(name, modes, notes) if peer is not None else {}
    for m, ans in tarms.items():
        arms[m] = RemoteArm(peer, name, m)
        first[m] = ans["first_call_s"]
        infer_first[m] = {b: ans["infer_first_call_s"][str(b)] for b in cfg["infer_sizes"]}
    dense = {a: arm for a, arm in arms.items() if a not in SPARSE_ARMS}
    rows, loads = time_arms(dense, cfg, first_train=first, first_infer=infer_first,
                            items_per_step=args.batch, item="examples", unit="examples")
    sparse = {a: arm for a, arm in arms.items() if a in SPARSE_ARMS}
    if sparse:
        srows, sloads = time_arms(sparse, {**cfg, "infer_sizes": ()}, first_train=first,
                                  first_infer={}, items_per_step=args.batch, item="examples",
                                  unit="examples")
        rows.update(srows)
        loads += sloads
    jax_res = {"params": params, "rows": {a: rows[a] for a in jax_arms},
               "final_loss": {a: arms[a].final_loss() for a in jax_arms}, "load_avg_1min": loads}
    torch_res = {"rows": {m: rows[m] for m in tarms}}
    if tarms:
        torch_res["params"] = next(iter(tarms.values()))["params"]
        torch_res["optimizer"] = {m: tarms[m]["optimizer"] for m in tarms}
        torch_res["final_loss"] = {m: arms[m].loss() for m in tarms}
    print(f"{name}: done", flush=True)
    return jax_res, torch_res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--batch", type=int, default=None,
                   help="training batch size in examples (default 4096; 64 with --quick)")
    p.add_argument("--pool", type=int, default=None,
                   help="distinct training batches cycled through (default 4; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of interleaved blocks")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--torch-modes", nargs="+", choices=TORCH_MODES, default=None,
                   help="torch arms (default: all; eager and sparse with --quick, since a cold "
                   "torch.compile takes longer than the whole quick run)")
    p.add_argument("--no-sparse", action="store_true",
                   help="leave out the sparse-embedding arms (JAX and torch)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in about a minute: tiny models and tables, batch 64, 1 short "
                   "round, no torch.compile, sparse arms for "
                   + " and ".join(QUICK_SPARSE_MODELS) + " only")
    p.add_argument("--no-torch", action="store_true", help="JAX rows only")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batch = args.batch or (64 if args.quick else 4096)
    args.pool = args.pool or (2 if args.quick else 4)
    if args.batch < 2 or args.batch % 8:
        p.error(f"--batch={args.batch}: expected a multiple of 8")
    modes = args.torch_modes or (["eager", "sparse"] if args.quick else list(TORCH_MODES))
    if args.no_sparse:
        modes = [m for m in modes if m != "sparse"]
    jax_arms = [a for a in JAX_ARMS if not (args.no_sparse and a == "jax_sparse")]

    if args.torch_worker:
        torch_worker(args)
        return 0

    t_start = time.perf_counter()
    # JAX must leave GPU memory to the torch process; XLA flags must precede JAX's start.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from mlsd_jax.utils.xla_flags import configure_jax

    configure_jax()
    busy_start = busy_cores()  # nothing of ours runs yet: this is other work on the host
    tmp = Path(tempfile.mkdtemp(prefix="recsys_throughput_"))
    peer, skipped = start_torch(args.no_torch, Path(__file__), worker_args(args), tmp)
    notes: list[str] = []
    torch_res: dict = {"skipped": skipped} if skipped else {**peer.info, "models": {}}
    sz = sizes(args.quick)
    try:
        import jax

        plat = jax.default_backend()
        cfg = run_settings(args, plat != "cpu")
        jax_res = {}
        for name in args.models:
            jax_res[name], tm = bench_model(name, args, cfg, sz, peer, modes, jax_arms, notes)
            if peer is not None:
                torch_res["models"][name] = tm
        if peer is not None:
            torch_res.update(peer.request(cmd="checks"))
    finally:
        if peer is not None:
            peer.close()
        shutil.rmtree(tmp, ignore_errors=True)

    dev = jax.devices()[0]
    busy = (busy_start, busy_cores())
    notes += host_notes(plat, busy, torch_res, skipped, modes)
    for name, tm in torch_res.get("models", {}).items():
        if tm.get("params") is not None and tm["params"] != jax_res[name]["params"]:
            notes.append(f"{name}: parameter counts differ (JAX {jax_res[name]['params']:,}, "
                         f"torch {tm['params']:,})")
    lc = torch_res.get("loss_check", {})
    if "error" in lc:
        notes.append(f"loss check failed: {lc['error']}")
    elif lc:
        notes.append("loss check, torch vs mlsd_jax on the same random inputs: " + "; ".join(
            f"{k} {v['torch']:.6f} vs {v['jax']:.6f} (|diff| {v['abs_diff']:.1e})"
            for k, v in lc.items()))
    parity = torch_res.get("parity", {})
    if parity:
        notes.append("parity check, the JAX parameters copied into the torch peer (small "
                     "sizes, 12 id fields and 11 numbers for CTR; inference; out-of-vocabulary "
                     "ids included), largest |JAX - torch| output difference: " + "; ".join(
                         f"{m} {v['max_abs_diff']:.1e} (outputs up to {v['max_abs_output']:.2g})"
                         if "error" not in v else f"{m} failed: {v['error']}"
                         for m, v in parity.items()))
    optimizers = {m: k for tm in torch_res.get("models", {}).values()
                  for m, k in tm.get("optimizer", {}).items()}
    torch_res["compile_optimizer"] = optimizers.get("compile", "—")
    if optimizers:
        notes.append("torch optimizers: " + "; ".join(f"{m}: {k}" for m, k in optimizers.items())
                     + "; LambdaLR with the same warmup + cosine schedule; clip_grad_norm_ "
                     "(sparse: the global norm over dense and coalesced row gradients); "
                     "torch.compile(dynamic=False, inductor fallback_random=True"
                     + (", mode='reduce-overhead' (CUDA graphs)" if plat != "cpu" else "")
                     + "); compiled predict is a separate torch.compile of the serving call")
    if any(n in jax_res for n in CTR_MODELS):
        notes.append("CTR id tables: in JAX and in torch the field tables live in one tensor "
                     "with per-field row offsets (one lookup per step instead of one per field; "
                     "each field keeps its rows and OOV row)")
    if plat == "cpu":
        notes.append("JAX CPU settings from mlsd_jax.utils.xla_flags.configure_jax(): XLA_FLAGS="
                     f"`{os.environ.get('XLA_FLAGS', '')}`; threefry lowered unrolled (same bits)")
    notes.append("JAX step: mlsd_jax Trainer.train_step (also returns loss, grad norm, lr and a "
                 "finite flag, and keeps the old state on a non-finite step); predict: "
                 "mlsd_jax.tasks.base.predict_fn of the serving signature")

    data_text, models_text = describe(sz, args.batch)
    loads = [x for r in jax_res.values() for x in r["load_avg_1min"]]
    results = {
        "benchmark": "recsys_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/recsys_throughput.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "device": device_info(dev, plat, torch_res, busy),
        "versions": versions(torch_res),
        "precision": precision(plat, torch_res),
        "settings": {**cfg, "batch": args.batch, "torch_modes": modes, "jax_arms": jax_arms,
                     "quick": args.quick, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "data": data_text, "models_text": models_text, "simulated": True,
                     "embedding_l2": embedding_l2(),
                     "cardinalities": {n: cardinalities(n, sz) for n in args.models}},
        "model_configs": {n: model_config(n, sz) for n in args.models},
        "load_avg_1min": loads, "jax": jax_res, "torch": torch_res, "notes": notes,
    }
    results["rows"] = build_rows(results)
    results["goals"] = goals(results["rows"], plat)
    results["wall_s"] = time.perf_counter() - t_start
    write_results(args.out_dir, "recsys_throughput", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
