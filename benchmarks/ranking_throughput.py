"""Ranking speed: our JAX rankers vs the same models written in PyTorch, interleaved in one run.

    python benchmarks/ranking_throughput.py                        # MSLR sample (fetched and cached)
    python benchmarks/ranking_throughput.py --store DIR            # a converted store, no network
    python benchmarks/ranking_throughput.py --export-store DIR     # write that store, then exit
    python benchmarks/ranking_throughput.py --quick --out-dir /tmp/r   # smoke run, well under a minute

For ``ListwiseAttentionRanker`` and ``MLPRanker`` (sizes read from ``configs/ranking/model/``)
with the LambdaRank loss (pairwise logistic x DCG lambda weights) and AdamW (``OptimConfig``
defaults: warmup + cosine schedule, weight decay 1e-4, global-norm clipping 1.0) it measures

* training throughput: the framework's own ``Trainer.train_step`` (jitted, state donated) on
  fixed ``[B, 128, 136]`` batches of real MSLR-WEB10K lists; steps/s and docs/s (``B * 128``
  slots per step, padding included);
* inference: the core's jitted ``predict_fn`` (the fitted ``log1p_standardize`` transform + the
  model, ``train=False``) at 1, 16 and 256 lists per call; p50/p99 latency and lists/s;
* the PyTorch peer, same architectures, loss, optimizer, schedule and clipping, in two arms:
  ``eager`` and ``compile`` -- the WHOLE training step (forward, loss, backward, clipping, AdamW)
  inside ``torch.compile`` (``dynamic=False``, ``torch._inductor.config.fallback_random=True``;
  the optimizer is the compiled single-tensor AdamW on CPU with a tensor learning rate, fused
  AdamW on CUDA; on CUDA ``mode="reduce-overhead"``, i.e. CUDA graphs). A compile failure is
  recorded with its reason and the other rows still run.

Timing: every arm is set up (and compiled) first; then the arms take turns -- JAX, torch eager,
torch compile, JAX, ... -- in blocks of about ``train_target_s`` (or ``infer_target_s``) each, for
``repeats`` rounds, so slow phases of a shared machine hit every arm alike. Figures are medians
over rounds with their min-max spread; ratios are JAX / torch medians (> 1: JAX faster) and the
spread of the per-round (paired) ratios. Inputs are staged on the device beforehand (a pool of
batches cycled through): the figures are compute, not host transfers. Training blocks sync only
at their end; every inference call is synchronised on its output. The load average
(``os.getloadavg``) is recorded at every round.

The torch side runs in a child process that stays alive and answers one command per block over a
pipe: the frameworks never share threads, GPU memory or CUDA libraries, yet their blocks
interleave. On CPU its OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set):
spinning OpenMP threads collapse when other processes hold cores (10x slower steps were seen on
a shared 2-core host). Results go to ``benchmarks/results/ranking_throughput_<device>.{json,md}``
(``--out-dir`` to change).

PyTorch is optional (it is not a dependency of mlsd_jax): without it the torch rows are skipped
and the reason is written into the results. The script imports neither hydra, omegaconf, grain
nor tensorflow, so it runs on a machine with only jax/flax/optax/orbax/numpy/tqdm (and torch).

Precision: float32 parameters and activations everywhere. On GPU, JAX's default matmul precision
lets XLA use TF32 on Ampere and newer; torch gets the comparable setting
(``torch.backends.cuda.matmul.allow_tf32 = True``, cuDNN TF32 on). On CPU both are plain float32.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
STORE_FILES = ("features.npy", "labels.npy", "qid_offsets.npy", "qids.npy", "meta.json")
NUM_FEATURES = 136
LIST_SIZE = 128
INFER_SIZES = (1, 16, 256)
QUICK_INFER_SIZES = (1, 16)
MODELS = ("attn_ranker", "mlp_ranker")
TORCH_MODES = ("eager", "compile")
SCHEDULE_STEPS = 10_000  # length of the cosine schedule (only its shape matters here)
MODEL_CONFIG_DIRS = ("configs/ranking/model", "configs/model")


# ------------------------------------------------------------------------------------- config


def read_model_config(name: str) -> dict:
    """``configs/ranking/model/<name>.yaml`` (flat ``key: value`` lines) without YAML."""
    paths = [ROOT / d / f"{name}.yaml" for d in MODEL_CONFIG_DIRS]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"model config {name!r} not found in {MODEL_CONFIG_DIRS}")
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("_target_"):
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if value in ("true", "false"):
            out[key.strip()] = value == "true"
        else:
            v = json.loads(value)
            out[key.strip()] = tuple(v) if isinstance(v, list) else v
    return out


def run_settings(args, on_gpu: bool) -> dict:
    """Time budgets: a block of timed steps lasts about ``train_target_s``; a block of inference
    calls about ``infer_target_s``; every arm runs ``repeats`` blocks of each."""
    if args.quick:
        s = dict(repeats=2, train_target_s=0.2, infer_target_s=0.1, infer_min_calls=3)
    elif on_gpu:
        s = dict(repeats=5, train_target_s=0.5, infer_target_s=0.3, infer_min_calls=20)
    else:
        s = dict(repeats=5, train_target_s=1.5, infer_target_s=0.6, infer_min_calls=5)
    if args.repeats:
        s["repeats"] = args.repeats
    s.update(warmup_steps=2 if args.quick else 3, max_steps=2000, infer_max_calls=2000,
             pool=args.pool, infer_sizes=QUICK_INFER_SIZES if args.quick else INFER_SIZES)
    return s


# --------------------------------------------------------------------------------------- data


def export_store(out_dir: Path) -> Path:
    """Copies the converted MSLR-WEB10K training sample into ``out_dir`` (fetches it if needed)."""
    store = open_store(None)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in STORE_FILES:
        shutil.copyfile(store.directory / name, out_dir / name)
    return out_dir


def open_store(path: str | None):
    if path:
        from mlsd_jax.data.letor import QueryStore

        return QueryStore.open(path)
    from mlsd_jax.data.fetch import fetch_packaged
    from mlsd_jax.data.letor import open_letor
    from mlsd_jax.data.ranking import MSLR_SAMPLE_TRAIN

    return open_letor(fetch_packaged(MSLR_SAMPLE_TRAIN), num_features=NUM_FEATURES, progress=False)


def make_batches(store, batch_size: int, count: int, seed: int) -> list[dict]:
    """``count`` batches of ``batch_size`` lists, cycling through the queries in seeded random
    order; long lists are randomly subsampled to 128 docs, short ones padded (``mask``)."""
    from mlsd_jax.data.lists import pad_list

    rng = np.random.default_rng(seed)
    order: list[int] = []
    batches = []
    for _ in range(count):
        rows = []
        for _ in range(batch_size):
            if not order:
                order = list(rng.permutation(len(store)))
            rows.append(pad_list(*store.query(order.pop()), LIST_SIZE, rng))
        batches.append({k: np.stack([r[k] for r in rows]) for k in rows[0]})
    return batches


def fit_transform(store) -> dict:
    from mlsd_jax.features import fit_log1p_standardize

    return fit_log1p_standardize((np.asarray(store.query(i)[0], np.float32)
                                  for i in range(len(store))), store.num_features)


def all_data(store, batch_size: int, cfg: dict) -> dict:
    return {"stats": fit_transform(store),
            "train": make_batches(store, batch_size, cfg["pool"], seed=0),
            "infer": {b: make_batches(store, b, 1, seed=100 + b)[0] for b in cfg["infer_sizes"]}}


# ------------------------------------------------------------------------------------- timing


def measure_steps(run_n, sync, cfg: dict) -> dict:
    """Throughput of ``run_n(n)`` (n steps dispatched back to back), median over repeats, for
    one contender on its own (``benchmarks/ranking_pipeline.py`` uses it)."""
    t = time.perf_counter()
    run_n(1)
    sync()
    first = time.perf_counter() - t
    run_n(cfg["warmup_steps"])
    sync()
    n = steps_per_block(lambda k: (run_n(k), sync()), cfg)
    rates = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        run_n(n)
        sync()
        rates.append(n / (time.perf_counter() - t))
    return {"steps_per_s": float(np.median(rates)), "repeats_steps_per_s": rates,
            "steps_per_repeat": n, "first_call_s": first}


def steps_per_block(run, cfg: dict) -> int:
    """Steps that take about ``train_target_s``, from a timed probe of 3 (``run(n)`` syncs)."""
    t = time.perf_counter()
    run(3)
    per = (time.perf_counter() - t) / 3
    return int(min(max(math.ceil(cfg["train_target_s"] / max(per, 1e-6)), 3), cfg["max_steps"]))


def calls_per_block(per_call_s: float, cfg: dict) -> int:
    n = math.ceil(cfg["infer_target_s"] / max(per_call_s, 1e-6))
    return int(min(max(n, cfg["infer_min_calls"]), cfg["infer_max_calls"]))


def interleave(blocks: dict, repeats: int) -> tuple[dict, list]:
    """Runs ``blocks[arm]()`` for every arm, round after round (the order rotates each round so
    no arm always follows the same one). Returns ``{arm: [result per round]}`` and the 1-minute
    load average at the start of each round."""
    out = {k: [] for k in blocks}
    loads = []
    names = list(blocks)
    for r in range(repeats):
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        for k in names[r % len(names):] + names[:r % len(names)]:
            out[k].append(blocks[k]())
    return out, loads


def spread(values) -> dict:
    v = [float(x) for x in values]
    return {"median": float(np.median(v)), "min": min(v), "max": max(v), "repeats": v}


def train_row(rates: list, first_call_s: float, steps: int, batch: int) -> dict:
    s = spread(rates)
    return {"steps_per_s": s["median"], "steps_per_s_min": s["min"], "steps_per_s_max": s["max"],
            "repeats_steps_per_s": s["repeats"], "docs_per_s": s["median"] * batch * LIST_SIZE,
            "steps_per_repeat": steps, "first_call_s": first_call_s}


def infer_row(blocks: list, size: int, first_call_s: float) -> dict:
    """``blocks``: per round, the list of per-call latencies in seconds."""
    lat = np.concatenate([np.asarray(b, float) for b in blocks])
    s = spread([size * len(b) / max(sum(b), 1e-12) for b in blocks])
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "mean_ms": float(lat.mean() * 1e3), "calls": int(lat.size),
            "lists_per_s": s["median"], "lists_per_s_min": s["min"], "lists_per_s_max": s["max"],
            "repeats_lists_per_s": s["repeats"], "first_call_s": first_call_s}


# ---------------------------------------------------------------------------------------- JAX


def make_task(model, stats: dict, example_batch: dict):
    """The ranking ``Task`` for timing, built by hand (no hydra, no data pipeline): the task's
    own ``forward`` and LambdaRank as ``loss_fn``; nothing to evaluate (``trainer.eval_every=0``).
    This is the one place that knows the Task contract."""
    import jax.numpy as jnp

    from mlsd_jax.losses import lambdarank_loss
    from mlsd_jax.tasks.base import Signature, Task
    from mlsd_jax.tasks.ranking import forward

    def loss_fn(outputs, batch):
        labels = jnp.where(batch["mask"], batch["label"], 0.0)
        return lambdarank_loss(outputs["scores"], labels, where=batch["mask"]), {}

    signature = Signature(
        inputs={"features": (("batch", "list", NUM_FEATURES), np.float32),
                "mask": (("batch", "list"), np.bool_)},
        outputs={"scores": "float32 [batch, list]"},
        predict=lambda apply, consts, x: forward(apply, consts, x, train=False))
    return Task(
        name="ranking", model=model, consts={"features": stats}, forward=forward,
        loss_fn=loss_fn, metrics={},
        example_weight=lambda b: jnp.any(b["mask"], -1).astype(jnp.float32),
        train_batches=lambda seed, start: iter(()), eval_splits={},
        example_batch={k: v[:1] for k, v in example_batch.items()},
        input_keys=("features", "mask"), signatures={"serving_default": signature},
        serving="mlsd_jax.tasks.ranking:serving", target_metric="ndcg@10")


class JaxRanker:
    """One JAX model: the framework's train step and predict function on staged batches."""

    def __init__(self, name: str, model_cfg: dict, data: dict, args, cfg: dict):
        import jax

        from mlsd_jax.models import ListwiseAttentionRanker, MLPRanker
        from mlsd_jax.sharding import MeshConfig, make_mesh
        from mlsd_jax.tasks.base import predict_fn
        from mlsd_jax.training.optim import OptimConfig
        from mlsd_jax.training.trainer import Trainer, TrainerConfig

        model = (ListwiseAttentionRanker if name == "attn_ranker" else MLPRanker)(**model_cfg)
        self.task = make_task(model, data["stats"], data["train"][0])
        mesh = make_mesh(MeshConfig(num_devices=1))
        self.trainer = Trainer(self.task, TrainerConfig(
            max_steps=SCHEDULE_STEPS, batch_size=args.batch, eval_every=0, patience=0,
            progress=False), OptimConfig(), mesh)
        self.state = self.trainer.init_state()
        self.params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        self.staged = [self.trainer.put_batch(b) for b in data["train"]]
        self.rng = jax.device_put(jax.random.key(0), jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec()))
        self.i, self.metrics, self.cfg = 0, None, cfg
        self.predict = jax.jit(predict_fn(model, self.task.signatures["serving_default"]))
        self.infer_inputs = {b: {k: jax.device_put(v) for k, v in x.items()
                                 if k in ("features", "mask")} for b, x in data["infer"].items()}

    def _run(self, n: int) -> None:
        st = self.state
        for _ in range(n):
            st, self.metrics = self.trainer.train_step(st, self.staged[self.i % len(self.staged)],
                                                       self.rng)
            self.i += 1
        self.state = st

    def train(self, n: int) -> float:
        import jax

        t = time.perf_counter()
        self._run(n)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - t

    def first_train(self) -> float:
        first = self.train(1)
        self.train(self.cfg["warmup_steps"])
        return first

    def infer(self, size: int, calls: int) -> list[float]:
        import jax

        variables = {"params": self.state.params, **self.state.model_state}
        x, consts = self.infer_inputs[size], self.state.consts
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            jax.block_until_ready(self.predict(variables, consts, x))
            lat.append(time.perf_counter() - t)
        return lat

    def final_loss(self) -> float:
        return float(self.metrics["train/loss"])


# -------------------------------------------------------------------------------------- torch


def torch_modules():
    """The torch peer, defined lazily so that the script runs without torch."""
    import torch
    from torch import nn

    class Log1pStandardize(nn.Module):
        def __init__(self, stats):
            super().__init__()
            self.register_buffer("mean", torch.as_tensor(stats["mean"]))
            self.register_buffer("std", torch.as_tensor(stats["std"]))

        def forward(self, x):
            return (torch.sign(x) * torch.log1p(torch.abs(x)) - self.mean) / self.std

    def mlp(d_in, hidden, dropout, layer_norm, out=None):
        layers = []
        for w in hidden:
            layers.append(nn.Linear(d_in, w))
            if layer_norm:
                layers.append(nn.LayerNorm(w, eps=1e-6))  # flax's default epsilon
            layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            d_in = w
        if out is not None:
            layers.append(nn.Linear(d_in, out))
        return nn.Sequential(*layers)

    class TorchMLPRanker(nn.Module):
        def __init__(self, stats, num_features, hidden, dropout, input_noise, layer_norm):
            super().__init__()
            self.transform = Log1pStandardize(stats)
            self.noise = input_noise
            self.net = mlp(num_features, hidden, dropout, layer_norm, out=1)

        def forward(self, x, mask):
            x = self.transform(x.masked_fill(~mask[..., None], 0.0))  # as the JAX forward
            if self.training and self.noise > 0:
                x = x + self.noise * torch.randn_like(x)
            return self.net(x).squeeze(-1).masked_fill(~mask, -1e9)

    class TorchAttentionRanker(nn.Module):
        def __init__(self, stats, num_features, d_model, encoder_hidden, num_layers, num_heads,
                     mlp_dim, dropout, attention_dropout, input_noise, head_hidden):
            super().__init__()
            self.transform = Log1pStandardize(stats)
            self.noise = input_noise
            self.encoder_mlp = mlp(num_features, encoder_hidden, dropout, True, out=d_model)
            layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=mlp_dim,
                                               dropout=dropout, activation="gelu",
                                               layer_norm_eps=1e-6, batch_first=True,
                                               norm_first=True)
            layer.self_attn.dropout = attention_dropout  # torch ties it to `dropout` otherwise
            self.encoder = nn.TransformerEncoder(layer, num_layers,
                                                 norm=nn.LayerNorm(d_model, eps=1e-6),
                                                 enable_nested_tensor=False)
            self.head = mlp(d_model, head_hidden, dropout, False, out=1)

        def forward(self, x, mask):
            x = self.transform(x.masked_fill(~mask[..., None], 0.0))  # as the JAX forward
            if self.training and self.noise > 0:
                x = x + self.noise * torch.randn_like(x)
            h = self.encoder_mlp(x)
            a = self.encoder(h, src_key_padding_mask=~mask)
            return self.head(h * (1.0 + a)).squeeze(-1).masked_fill(~mask, -1e9)

    def lambdarank(scores, labels, mask):
        """Pairwise logistic loss over pairs with label_i > label_j, weighted by |dGain|*|dDisc|
        / ideal DCG (ranks from the current scores, ties by index; weights detached); mean over
        lists with a valid item -- the same definition as mlsd_jax.losses.lambdarank_loss."""
        s = torch.where(mask, scores.float(), 0.0)
        y = torch.where(mask, labels.float(), 0.0)
        L = s.shape[-1]
        with torch.no_grad():
            gains = torch.where(mask, torch.exp2(y) - 1.0, 0.0)
            pos = torch.arange(1, L + 1, device=s.device, dtype=torch.float32)
            inv_log = 1.0 / torch.log2(1.0 + pos)
            order = torch.argsort(torch.where(mask, s, -torch.inf), dim=-1, descending=True,
                                  stable=True)
            disc = torch.empty_like(s).scatter_(-1, order, inv_log.expand_as(s))
            disc = torch.where(mask, disc, 0.0)
            lw = (gains[..., :, None] - gains[..., None, :]).abs() * \
                (disc[..., :, None] - disc[..., None, :]).abs()
            ideal = (torch.sort(gains, dim=-1, descending=True).values * inv_log).sum(-1)
            lw = torch.where(ideal[..., None, None] > 0, lw / ideal.clamp_min(1e-30)[..., None, None], 0.0)
            pairs = mask[..., :, None] & mask[..., None, :] & (y[..., :, None] > y[..., None, :])
        per_pair = nn.functional.softplus(-(s[..., :, None] - s[..., None, :]))
        total = torch.where(pairs, per_pair * lw, 0.0).sum((-2, -1))
        n_pairs = pairs.sum((-2, -1)).float()
        per_list = torch.where(n_pairs > 0, total / n_pairs.clamp_min(1.0), 0.0)
        counted = mask.any(-1).float()
        return (per_list * counted).sum() / counted.sum().clamp_min(1.0)

    return TorchMLPRanker, TorchAttentionRanker, lambdarank


def warmup_cosine(step: int, cfg) -> float:
    """optax.warmup_cosine_decay_schedule(0, lr, warmup, SCHEDULE_STEPS, lr * end_factor)."""
    warm = min(cfg.warmup_steps, SCHEDULE_STEPS - 1)
    if step < warm:
        return cfg.lr * step / warm
    t = min(step - warm, SCHEDULE_STEPS - warm) / (SCHEDULE_STEPS - warm)
    end = cfg.lr * cfg.end_lr_factor
    return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * t))


class TorchRanker:
    """One torch model in one arm (``eager`` or ``compile``), in the worker process."""

    def __init__(self, name: str, mode: str, data: dict, device, ocfg, modules,
                 single_tensor: bool = False):
        import torch

        TorchMLPRanker, TorchAttentionRanker, self.lambdarank = modules
        cls = TorchAttentionRanker if name == "attn_ranker" else TorchMLPRanker
        torch.manual_seed(0)
        self.model = cls(data["stats"], NUM_FEATURES, **read_model_config(name)).to(device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.device, self.on_gpu = device, device.type == "cuda"
        self.sync = torch.cuda.synchronize if self.on_gpu else (lambda: None)
        dev = lambda b: {k: torch.from_numpy(v).to(device) for k, v in b.items()}  # noqa: E731
        self.staged = [dev(b) for b in data["train"]]
        self.infer_inputs = {b: dev(x) for b, x in data["infer"].items()}
        self.optimizer_kind = self._make_optimizer(mode, ocfg, single_tensor)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: warmup_cosine(s, ocfg) / ocfg.lr)
        model, opt, lambdarank, clip = self.model, self.opt, self.lambdarank, ocfg.clip_norm

        def step(f, y, m):
            opt.zero_grad(set_to_none=True)
            loss = lambdarank(model(f, m), y, m)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            return loss.detach()

        def predict(f, m):
            return model(f, m)

        if mode == "compile":
            # The whole step: forward, loss, backward, clipping and AdamW (dynamo compiles the
            # optimizer step as its own graph); CUDA graphs on GPU.
            kw = dict(dynamic=False, mode="reduce-overhead" if self.on_gpu else None)
            step, predict = torch.compile(step, **kw), torch.compile(predict, **kw)
        self.step, self.predict_fn = step, predict
        self.i, self.loss = 0, None

    def _make_optimizer(self, mode: str, ocfg, single_tensor: bool) -> str:
        import torch

        kw = dict(betas=(ocfg.b1, ocfg.b2), weight_decay=ocfg.weight_decay, eps=1e-8)
        params = list(self.model.parameters())
        if mode == "compile" and not self.on_gpu and single_tensor:
            self.opt = torch.optim.AdamW(params, lr=torch.tensor(ocfg.lr), foreach=False, **kw)
            return "AdamW(foreach=False, tensor lr), compiled"
        if mode == "compile" and not self.on_gpu:
            # Compiled multi-tensor AdamW; a tensor learning rate keeps the schedule from
            # recompiling the step (capturable: only the compiled path allows it on CPU).
            self.opt = torch.optim.AdamW(params, lr=torch.tensor(ocfg.lr), foreach=True,
                                         capturable=True, **kw)
            return "AdamW(foreach=True, capturable=True, tensor lr), compiled"
        lr = torch.tensor(ocfg.lr, device=self.device) if mode == "compile" else ocfg.lr
        try:  # the fused kernel: CUDA, and CPU since torch 2.4
            self.opt = torch.optim.AdamW(params, lr=lr, fused=True, **kw)
            return "AdamW(fused=True" + (", tensor lr), inside the compiled step"
                                         if mode == "compile" else ")")
        except (RuntimeError, ValueError, TypeError):
            self.opt = torch.optim.AdamW(params, lr=ocfg.lr, **kw)
            return "AdamW (default implementation)"

    def train(self, n: int) -> float:
        self.model.train()
        t = time.perf_counter()
        for _ in range(n):
            b = self.staged[self.i % len(self.staged)]
            self.i += 1
            self.loss = self.step(b["features"], b["label"], b["mask"])
            self.sched.step()
        self.sync()
        return time.perf_counter() - t

    def infer(self, size: int, calls: int) -> list[float]:
        import torch

        self.model.eval()
        x = self.infer_inputs[size]
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            with torch.inference_mode():
                self.predict_fn(x["features"], x["mask"])
            self.sync()
            lat.append(time.perf_counter() - t)
        return lat


def loss_check(lambdarank, torch, device) -> dict:
    """The torch loss against mlsd_jax.losses.lambdarank_loss on random scores (JAX on CPU)."""
    try:
        import jax.numpy as jnp

        from mlsd_jax.losses import lambdarank_loss

        rng = np.random.default_rng(7)
        s = rng.normal(size=(8, 32)).astype(np.float32)
        y = rng.integers(0, 5, size=(8, 32)).astype(np.float32)
        m = rng.random((8, 32)) < 0.8
        m[:, 0] = True
        m[-1] = False  # a fully padded list
        ref = float(lambdarank_loss(jnp.asarray(s), jnp.asarray(y), where=jnp.asarray(m)))
        got = float(lambdarank(torch.from_numpy(s).to(device), torch.from_numpy(y).to(device),
                               torch.from_numpy(m).to(device)))
        return {"jax": ref, "torch": got, "abs_diff": abs(ref - got)}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


def torch_worker(args) -> None:
    """Child process: builds the torch arms on request and times blocks, one JSON line per
    command on stdin, one JSON line per answer on stdout (library output goes to stderr)."""
    out, sys.stdout = sys.stdout, sys.stderr
    import torch
    import torch._inductor.config as inductor_config

    from mlsd_jax.training.optim import OptimConfig

    inductor_config.fallback_random = True  # the same RNG calls as eager
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(os.cpu_count())
    cfg = run_settings(args, on_gpu)
    data = all_data(open_store(args.store), args.batch, cfg)
    modules = torch_modules()
    arms: dict = {}

    def reply(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"device": torch.cuda.get_device_name(0) if on_gpu else cpu_model(),
           "device_type": device.type, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "tf32": bool(on_gpu and torch.backends.cuda.matmul.allow_tf32),
           "loss_check": loss_check(modules[2], torch, device)})
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        key = (msg.get("model"), msg.get("mode"))
        try:
            if cmd == "setup":
                try:
                    arm = TorchRanker(*key, data, device, OptimConfig(), modules)
                    first = arm.train(1)
                except Exception:  # noqa: BLE001 -- the compiled multi-tensor AdamW on CPU
                    if key[1] != "compile" or on_gpu:
                        raise
                    arm = TorchRanker(*key, data, device, OptimConfig(), modules, True)
                    first = arm.train(1)
                arms[key] = arm
                arm.train(cfg["warmup_steps"])
                infer_first = {}
                for b in cfg["infer_sizes"]:
                    infer_first[b] = arm.infer(b, 1)[0]
                    arm.infer(b, 2)
                reply({"params": arm.params, "first_call_s": first, "optimizer": arm.optimizer_kind,
                       "infer_first_call_s": infer_first})
            elif cmd == "train":
                reply({"seconds": arms[key].train(msg["n"])})
            elif cmd == "infer":
                reply({"latencies": arms[key].infer(msg["size"], msg["calls"])})
            elif cmd == "loss":
                reply({"loss": float(arms[key].loss)})
            else:
                reply({"error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 -- reported to the parent, which records it
            arms.pop(key, None) if cmd == "setup" else None
            reply({"error": f"{type(e).__name__}: {str(e).strip()[:400]}"})


class TorchPeer:
    """The parent's handle on the torch worker process."""

    def __init__(self, args, tmp: Path):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker",
               "--batch", str(args.batch), "--pool", str(args.pool)]
        if args.store:
            cmd += ["--store", str(args.store)]
        if args.quick:
            cmd.append("--quick")
        # The child uses JAX only for the loss check; fresh compiler caches make the
        # torch.compile first-call time a cold compile, as JAX's is.
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
                   TRITON_CACHE_DIR=str(tmp / "triton"))
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.log = tmp / "torch_worker.log"
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"))
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text().strip().splitlines()[-15:]
            raise RuntimeError(f"torch worker exited ({self.proc.poll()}): " + " | ".join(tail))
        return json.loads(line)

    def request(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def start_torch(args, tmp: Path):
    """``(peer, None)`` or ``(None, reason)`` when torch is absent or does not start."""
    if args.no_torch:
        return None, "--no-torch"
    if importlib.util.find_spec("torch") is None:
        return None, "PyTorch is not installed (pip install torch); torch rows skipped"
    try:
        return TorchPeer(args, tmp), None
    except (RuntimeError, OSError, json.JSONDecodeError) as e:
        return None, f"torch worker failed: {e}"


# ------------------------------------------------------------------------------------- report


def busy_cores(seconds: float = 1.0) -> float | None:
    """Cores kept busy by the whole host over a short window (from /proc/stat; Linux only)."""
    def sample():
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (1.0 - (i1 - i0) / max(t1 - t0, 1)) * (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_tag(kind: str, platform_name: str) -> str:
    if platform_name == "cpu":
        return "cpu"
    m = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", kind.lower().replace("nvidia", ""))
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or platform_name


def ratios(jax_row: dict, torch_row: dict | None, key: str) -> dict | None:
    """Median JAX / median torch, and the spread of the per-round (paired) ratios."""
    if not jax_row or not torch_row:
        return None
    paired = [a / b for a, b in zip(jax_row[f"repeats_{key}"], torch_row[f"repeats_{key}"])]
    return {"median_ratio": jax_row[key] / torch_row[key], "paired_min": min(paired),
            "paired_median": float(np.median(paired)), "paired_max": max(paired)}


def build_rows(results: dict, batch: int) -> list[dict]:
    rows = []
    tmodels = results["torch"].get("models", {})
    for name, j in results["jax"].items():
        t = tmodels.get(name, {}).get("rows", {})
        for key, jr in j["rows"].items():
            metric = "steps_per_s" if key == "train" else "lists_per_s"
            te, tc = t.get("eager", {}).get(key), t.get("compile", {}).get(key)
            rows.append({"model": name, "measurement": key,
                         "batch_lists": batch if key == "train" else int(key.split("_")[1]),
                         "jax": jr, "torch_eager": te, "torch_compile": tc,
                         "vs_eager": ratios(jr, te, metric), "vs_compile": ratios(jr, tc, metric),
                         "ratio_metric": metric})
    return rows


def _fmt(x, digits=3):
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e5:
        return f"{x / 1e3:,.0f}k"
    return f"{x:.{digits}g}" if x < 100 else f"{x:,.0f}"


def _cell(r):
    if not r:
        return "—"
    if "steps_per_s" in r:
        return (f"{_fmt(r['steps_per_s'])} steps/s ({_fmt(r['steps_per_s_min'])}–"
                f"{_fmt(r['steps_per_s_max'])}) · {_fmt(r['docs_per_s'])} docs/s")
    return (f"{_fmt(r['lists_per_s'])} lists/s ({_fmt(r['lists_per_s_min'])}–"
            f"{_fmt(r['lists_per_s_max'])}) · p50 {_fmt(r['p50_ms'])} ms · p99 {_fmt(r['p99_ms'])} ms")


def _ratio(x):
    if x is None:
        return "—"
    return f"**{x['median_ratio']:.2f}×** ({x['paired_min']:.2f}–{x['paired_max']:.2f})"


def markdown(results: dict) -> str:
    d, v, s, t = results["device"], results["versions"], results["settings"], results["torch"]
    loads = [x for x in results["load_avg_1min"] if x is not None]
    lines = [
        f"# Ranking throughput: JAX (mlsd_jax) vs PyTorch — {d['tag']}",
        "",
        f"- device: JAX `{d['jax']}` ({d['jax_platform']}); torch `{d.get('torch') or '—'}` "
        f"({d.get('torch_device_type') or '—'}, {d.get('torch_threads') or '—'} threads, "
        f"OMP_WAIT_POLICY={t.get('omp_wait_policy') or 'unset'}); host {d['host_cpus']} CPU "
        f"cores ({d['host_cpu']})",
        f"- versions: python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, "
        f"optax {v['optax']}, numpy {v['numpy']}, torch {v.get('torch') or '—'}",
        f"- precision: {results['precision']}",
        f"- data: {s['data']}; batches [B, {LIST_SIZE}, {NUM_FEATURES}], train B = {s['batch']} lists "
        f"({s['batch'] * LIST_SIZE} doc slots/step, padding included), pool of {s['pool']} batches "
        f"staged on the device",
        f"- training: LambdaRank (pairwise logistic × DCG lambda weights), AdamW (lr 1e-3, warmup + "
        f"cosine, wd 1e-4), grad clip 1.0. JAX: `Trainer.train_step`; torch.compile: the whole step "
        f"(forward, backward, clipping, optimizer), {t.get('compile_optimizer', '—')}",
        f"- timing: arms interleaved, {s['repeats']} rounds of ~{s['train_target_s']} s (train) and "
        f"~{s['infer_target_s']} s (inference) blocks each; median (min–max over rounds); ratio = "
        f"JAX / torch medians (min–max of the per-round paired ratios), > 1: JAX faster"
        + (" (--quick)" if s["quick"] else ""),
        f"- load average (1 min) over the rounds: "
        + (f"{min(loads):.2f}–{max(loads):.2f} on {d['host_cpus']} cores" if loads else "n/a")
        + f"; other work before/after: {results['device']['other_busy_cores_before_after']} cores",
        "",
        "| model | measurement | JAX | torch eager | torch.compile | JAX / eager | JAX / compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        what = (f"train, B={r['batch_lists']}" if r["measurement"] == "train"
                else f"predict, {r['batch_lists']} list{'s' if r['batch_lists'] > 1 else ''}")
        lines.append(f"| {r['model']} | {what} | {_cell(r['jax'])} | {_cell(r['torch_eager'])} | "
                     f"{_cell(r['torch_compile'])} | {_ratio(r['vs_eager'])} | "
                     f"{_ratio(r['vs_compile'])} |")
    lines += ["", "| model | params JAX | params torch | first train step (compile) JAX / eager / "
              "torch.compile, s |", "|---|---|---|---|"]
    for name, j in results["jax"].items():
        tm = t.get("models", {}).get(name, {})
        first = [j["rows"]["train"]["first_call_s"]] + [
            tm.get("rows", {}).get(mode, {}).get("train", {}).get("first_call_s")
            for mode in TORCH_MODES]
        tp = tm.get("params")
        mark = "" if tp is None or tp == j["params"] else " (differs)"
        lines.append(f"| {name} | {j['params']:,} | {'—' if tp is None else f'{tp:,}'}{mark} | "
                     + " / ".join("—" if x is None else f"{x:.1f}" for x in first) + " |")
    if results["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main


def torch_arms(peer, name: str, modes, notes: list) -> dict:
    """Sets up (compiles) the torch arms of one model; returns ``{mode: setup answer}``."""
    arms = {}
    if peer is None:
        return arms
    for mode in modes:
        ans = peer.request(cmd="setup", model=name, mode=mode)
        if "error" in ans:
            notes.append(f"torch {mode} failed for {name}, its rows are skipped: {ans['error']}")
            print(f"torch {mode} {name}: {ans['error']}", flush=True)
            continue
        arms[mode] = ans
        print(f"torch {mode} {name}: ready (first step {ans['first_call_s']:.1f} s)", flush=True)
    return arms


def bench_model(name: str, data: dict, args, cfg: dict, peer, modes, notes: list):
    """Both frameworks' arms of one model, interleaved. Returns ``(jax_result, torch_result)``."""
    jx = JaxRanker(name, read_model_config(name), data, args, cfg)
    jax_first = jx.first_train()
    jax_infer_first = {}
    for b in cfg["infer_sizes"]:
        jax_infer_first[b] = jx.infer(b, 1)[0]
        jx.infer(b, 2)
    print(f"jax {name}: ready (first step {jax_first:.1f} s)", flush=True)
    tarms = torch_arms(peer, name, modes, notes)

    def train_block(mode):
        if mode == "jax":
            return jx.train
        return lambda n: peer.request(cmd="train", model=name, mode=mode, n=n)["seconds"]

    def infer_block(mode, size):
        if mode == "jax":
            return lambda calls: jx.infer(size, calls)
        return lambda calls: peer.request(cmd="infer", model=name, mode=mode, size=size,
                                          calls=calls)["latencies"]

    arms = ["jax", *tarms]
    loads = []
    steps = {a: steps_per_block(train_block(a), cfg) for a in arms}
    runs, l = interleave({a: (lambda a=a: steps[a] / train_block(a)(steps[a])) for a in arms},
                         cfg["repeats"])
    loads += l
    first = {"jax": jax_first, **{m: tarms[m]["first_call_s"] for m in tarms}}
    rows = {a: {"train": train_row(runs[a], first[a], steps[a], args.batch)} for a in arms}
    for b in cfg["infer_sizes"]:
        calls = {a: calls_per_block(float(np.median(infer_block(a, b)(3))), cfg) for a in arms}
        lat, l = interleave({a: (lambda a=a: infer_block(a, b)(calls[a])) for a in arms},
                            cfg["repeats"])
        loads += l
        ifirst = {"jax": jax_infer_first[b],
                  **{m: tarms[m]["infer_first_call_s"][str(b)] for m in tarms}}
        for a in arms:
            rows[a][f"infer_{b}"] = infer_row(lat[a], b, ifirst[a])
    jax_res = {"params": jx.params, "final_loss": jx.final_loss(), "rows": rows["jax"],
               "load_avg_1min": loads}
    torch_res = {"rows": {m: rows[m] for m in tarms}}
    if tarms:
        torch_res["params"] = next(iter(tarms.values()))["params"]
        torch_res["optimizer"] = {m: tarms[m]["optimizer"] for m in tarms}
        for m in tarms:
            torch_res[f"final_loss_{m}"] = peer.request(cmd="loss", model=name, mode=m)["loss"]
    print(f"{name}: done", flush=True)
    return jax_res, torch_res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="a converted query store (features.npy, labels.npy, "
                   "qid_offsets.npy, qids.npy, meta.json); default: the MSLR sample (fetched)")
    p.add_argument("--export-store", metavar="DIR",
                   help="write the MSLR-WEB10K training sample's store into DIR and exit")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--batch", type=int, default=None,
                   help="training batch size in lists (default 64; 16 with --quick)")
    p.add_argument("--pool", type=int, default=None,
                   help="distinct training batches cycled through (default 8; 2 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of interleaved blocks")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--torch-modes", nargs="+", choices=TORCH_MODES, default=None,
                   help="torch arms (default: eager and compile; eager only with --quick, "
                   "since a cold torch.compile takes longer than the whole quick run)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in well under a minute: B=16, 2 short rounds, predict at 1 "
                   "and 16 lists, torch eager only")
    p.add_argument("--no-torch", action="store_true", help="JAX rows only")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batch = args.batch or (16 if args.quick else 64)
    args.pool = args.pool or (2 if args.quick else 8)
    modes = args.torch_modes or (["eager"] if args.quick else list(TORCH_MODES))

    if args.export_store:
        out = export_store(Path(args.export_store))
        size = sum((out / n).stat().st_size for n in STORE_FILES)
        print(f"wrote {out} ({size / 2**20:.1f} MiB)")
        return 0
    if args.torch_worker:
        torch_worker(args)
        return 0

    t_start = time.perf_counter()
    # JAX must leave GPU memory to the torch process; XLA flags must precede JAX's start.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from mlsd_jax.utils.xla_flags import configure_jax

    configure_jax()
    busy_start = busy_cores()  # nothing of ours runs yet: this is other work on the host
    store = open_store(args.store)
    tmp = Path(tempfile.mkdtemp(prefix="ranking_throughput_"))
    peer, skipped = start_torch(args, tmp)
    notes: list[str] = []
    torch_res: dict = {"skipped": skipped} if skipped else {**peer.info, "models": {}}
    try:
        import flax
        import jax
        import jaxlib
        import optax

        plat = jax.default_backend()
        cfg = run_settings(args, plat != "cpu")
        data = all_data(store, args.batch, cfg)
        jax_res = {}
        for name in args.models:
            jax_res[name], tm = bench_model(name, data, args, cfg, peer, modes, notes)
            if peer is not None:
                torch_res["models"][name] = tm
    finally:
        if peer is not None:
            peer.close()
        shutil.rmtree(tmp, ignore_errors=True)

    dev = jax.devices()[0]
    busy_end = busy_cores()
    busy = [b for b in (busy_start, busy_end) if b is not None]
    if plat == "cpu" and busy and max(busy) > 0.25:
        notes.append(f"other work kept {max(busy):.1f} of {os.cpu_count()} cores busy before or "
                     "after the run: CPU figures are disturbed (the interleaving spreads the "
                     "disturbance over all arms)")
    if skipped:
        notes.append(f"torch rows skipped: {skipped}")
    elif "compile" not in modes:
        notes.append("torch.compile arm not run (--quick or --torch-modes)")
    for name, tm in torch_res.get("models", {}).items():
        if tm.get("params") is not None and tm["params"] != jax_res[name]["params"]:
            notes.append(f"{name}: parameter counts differ (JAX {jax_res[name]['params']:,}, "
                         f"torch {tm['params']:,})")
    if torch_res.get("device_type") and torch_res["device_type"] != ("cpu" if plat == "cpu" else "cuda"):
        notes.append(f"JAX runs on {plat} but torch on {torch_res['device_type']}: ratios compare "
                     "different devices")
    lc = torch_res.get("loss_check", {})
    if "abs_diff" in lc:
        notes.append(f"loss check: torch LambdaRank {lc['torch']:.6f} vs mlsd_jax "
                     f"{lc['jax']:.6f} on the same random scores (|diff| {lc['abs_diff']:.1e})")
    optimizers = {m: k for tm in torch_res.get("models", {}).values()
                  for m, k in tm.get("optimizer", {}).items()}
    torch_res["compile_optimizer"] = optimizers.get("compile", "—")
    if optimizers:
        notes.append("torch optimizers: " + "; ".join(f"{m}: {k}" for m, k in optimizers.items())
                     + "; LambdaLR with the same warmup + cosine schedule, clip_grad_norm_; "
                     "torch.compile(dynamic=False, inductor fallback_random=True"
                     + (", mode='reduce-overhead' (CUDA graphs)" if plat != "cpu" else "")
                     + "); compiled predict is a separate torch.compile of the model call")
    notes.append("GELU: flax `nn.gelu` (tanh approximation) in JAX, torch's `\"gelu\"` (erf) in the "
                 "torch TransformerEncoderLayer; attention dropout 0 in both (config)")
    if plat == "cpu":
        notes.append("JAX CPU settings from mlsd_jax.utils.xla_flags.configure_jax(): XLA_FLAGS="
                     f"`{os.environ.get('XLA_FLAGS', '')}`; threefry lowered unrolled (same bits)")
    notes.append("JAX step: mlsd_jax Trainer.train_step (also returns loss, grad norm, lr and a "
                 "finite flag, and keeps the old state on a non-finite step); predict: "
                 "mlsd_jax.tasks.base.predict_fn of the serving signature")

    loads = [x for r in jax_res.values() for x in r["load_avg_1min"]]
    results = {
        "benchmark": "ranking_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/ranking_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": {"tag": device_tag(dev.device_kind, plat), "jax": dev.device_kind,
                   "jax_platform": plat, "torch": torch_res.get("device"),
                   "torch_device_type": torch_res.get("device_type"),
                   "host_cpus": os.cpu_count(), "torch_threads": torch_res.get("threads"),
                   "other_busy_cores_before_after": [busy_start, busy_end],
                   "host_cpu": cpu_model(), "machine": platform.platform()},
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__,
                     "torch": torch_res.get("torch")},
        "precision": ("float32; JAX default matmul precision (XLA may use TF32 on GPU); torch "
                      f"allow_tf32={torch_res.get('tf32')}" if plat != "cpu"
                      else "float32 (CPU, no TF32) in both"),
        "settings": {**cfg, "batch": args.batch, "list_size": LIST_SIZE, "torch_modes": modes,
                     "num_features": NUM_FEATURES, "quick": args.quick,
                     "xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "data": (f"MSLR-WEB10K Fold1 training sample, {len(store)} queries, "
                              f"{int(np.sum(store.list_sizes))} docs")},
        "model_configs": {n: read_model_config(n) for n in args.models},
        "load_avg_1min": loads, "jax": jax_res, "torch": torch_res, "notes": notes,
    }
    results["rows"] = build_rows(results, args.batch)
    results["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ranking_throughput_{results['device']['tag']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
