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

The timing loop, the torch worker protocol, the statistics and the report helpers are shared
with ``benchmarks/recsys_throughput.py`` through ``benchmarks/_harness.py``.

PyTorch is optional (it is not a dependency of mlsd_jax): without it the torch rows are skipped
and the reason is written into the results. The script imports neither hydra, omegaconf, grain
nor tensorflow, so it runs on a machine with only jax/flax/optax/orbax/numpy/tqdm/pyyaml (and
torch).

Precision: float32 parameters and activations everywhere. On GPU, JAX's default matmul precision
lets XLA use TF32 on Ampere and newer; torch gets the comparable setting
(``torch.backends.cuda.matmul.allow_tf32 = True``, cuDNN TF32 on). On CPU both are plain float32.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (ROOT, RESULTS, JaxArm, RemoteArm, TorchArm,  # noqa: E402
                      busy_cores, cpu_model, device_info, device_line, device_tag, fmt, host_notes,
                      load_line, measure_steps, precision, ratio_cell, ratios, read_model_file,
                      serve_torch, start_torch, time_arms, torch_hello, torch_worker_start,
                      versions, versions_line, write_results)

sys.path.insert(0, str(ROOT))
__all__ = ["LIST_SIZE", "RESULTS", "busy_cores", "cpu_model", "device_tag", "measure_steps",
           "open_store"]
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
    """``configs/ranking/model/<name>.yaml`` as the model's keyword arguments."""
    paths = [ROOT / d / f"{name}.yaml" for d in MODEL_CONFIG_DIRS]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"model config {name!r} not found in {MODEL_CONFIG_DIRS}")
    return read_model_file(path)


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


def jax_ranker(name: str, data: dict, args) -> JaxArm:
    """One JAX model: the framework's train step and predict function on staged batches."""
    from mlsd_jax.models import ListwiseAttentionRanker, MLPRanker
    from mlsd_jax.training.optim import OptimConfig

    model = (ListwiseAttentionRanker if name == "attn_ranker" else MLPRanker)(
        **read_model_config(name))
    task = make_task(model, data["stats"], data["train"][0])
    infer = {b: {k: x[k] for k in ("features", "mask")} for b, x in data["infer"].items()}
    return JaxArm(task, OptimConfig(), args.batch, data["train"], infer, SCHEDULE_STEPS)


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


def torch_ranker(name: str, mode: str, data: dict, device, ocfg, modules,
                 single_tensor: bool = False) -> TorchArm:
    """One torch model in one arm (``eager`` or ``compile``), in the worker process."""
    import torch

    TorchMLPRanker, TorchAttentionRanker, lambdarank = modules
    cls = TorchAttentionRanker if name == "attn_ranker" else TorchMLPRanker
    torch.manual_seed(0)
    model = cls(data["stats"], NUM_FEATURES, **read_model_config(name))
    arm = TorchArm(model, data["train"], data["infer"], device)
    model = arm.model
    return arm.use_adamw(
        lambda b: lambdarank(model(b["features"], b["mask"]), b["label"], b["mask"]),
        lambda x: model(x["features"], x["mask"]), mode, ocfg, SCHEDULE_STEPS,
        single_tensor=single_tensor)


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
    """Child process: builds the torch arms on request and times blocks (see
    ``_harness.serve_torch``)."""
    out, torch, device = torch_worker_start()
    from mlsd_jax.training.optim import OptimConfig

    on_gpu = device.type == "cuda"
    cfg = run_settings(args, on_gpu)
    data = all_data(open_store(args.store), args.batch, cfg)
    modules = torch_modules()

    def setup(model: str, mode: str):
        try:
            arm = torch_ranker(model, mode, data, device, OptimConfig(), modules)
            return arm, arm.train(1)
        except Exception:  # noqa: BLE001 -- the compiled multi-tensor AdamW on CPU
            if mode != "compile" or on_gpu:
                raise
            arm = torch_ranker(model, mode, data, device, OptimConfig(), modules, True)
            return arm, arm.train(1)

    serve_torch(out, setup, {**torch_hello(torch, device),
                             "loss_check": loss_check(modules[2], torch, device)}, cfg)


def worker_args(args) -> list[str]:
    """The command-line arguments the torch worker needs to rebuild the same data."""
    out = ["--batch", str(args.batch), "--pool", str(args.pool)]
    if args.store:
        out += ["--store", str(args.store)]
    if args.quick:
        out.append("--quick")
    return out


# ------------------------------------------------------------------------------------- report


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


def _cell(r):
    if not r:
        return "—"
    if "steps_per_s" in r:
        return (f"{fmt(r['steps_per_s'])} steps/s ({fmt(r['steps_per_s_min'])}–"
                f"{fmt(r['steps_per_s_max'])}) · {fmt(r['docs_per_s'])} docs/s")
    return (f"{fmt(r['lists_per_s'])} lists/s ({fmt(r['lists_per_s_min'])}–"
            f"{fmt(r['lists_per_s_max'])}) · p50 {fmt(r['p50_ms'])} ms · p99 {fmt(r['p99_ms'])} ms")


def markdown(results: dict) -> str:
    d, s, t = results["device"], results["settings"], results["torch"]
    lines = [
        f"# Ranking throughput: JAX (mlsd_jax) vs PyTorch — {d['tag']}",
        "",
        device_line(d, t),
        versions_line(results["versions"]),
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
        load_line(results),
        "",
        "| model | measurement | JAX | torch eager | torch.compile | JAX / eager | JAX / compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        what = (f"train, B={r['batch_lists']}" if r["measurement"] == "train"
                else f"predict, {r['batch_lists']} list{'s' if r['batch_lists'] > 1 else ''}")
        lines.append(f"| {r['model']} | {what} | {_cell(r['jax'])} | {_cell(r['torch_eager'])} | "
                     f"{_cell(r['torch_compile'])} | {ratio_cell(r['vs_eager'])} | "
                     f"{ratio_cell(r['vs_compile'])} |")
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


def bench_model(name: str, data: dict, args, cfg: dict, peer, modes, notes: list):
    """Both frameworks' arms of one model, interleaved. Returns ``(jax_result, torch_result)``."""
    jx = jax_ranker(name, data, args)
    jax_first, jax_infer_first = jx.warm_up(cfg)
    print(f"jax {name}: ready (first step {jax_first:.1f} s)", flush=True)
    tarms = peer.setup(name, modes, notes) if peer is not None else {}
    arms = {"jax": jx, **{m: RemoteArm(peer, name, m) for m in tarms}}
    rows, loads = time_arms(
        arms, cfg, first_train={"jax": jax_first, **{m: tarms[m]["first_call_s"] for m in tarms}},
        first_infer={"jax": jax_infer_first,
                     **{m: {b: tarms[m]["infer_first_call_s"][str(b)] for b in cfg["infer_sizes"]}
                        for m in tarms}},
        items_per_step=args.batch * LIST_SIZE, item="docs", unit="lists")
    jax_res = {"params": jx.params, "final_loss": jx.final_loss(), "rows": rows["jax"],
               "load_avg_1min": loads}
    torch_res = {"rows": {m: rows[m] for m in tarms}}
    if tarms:
        torch_res["params"] = next(iter(tarms.values()))["params"]
        torch_res["optimizer"] = {m: tarms[m]["optimizer"] for m in tarms}
        for m in tarms:
            torch_res[f"final_loss_{m}"] = arms[m].loss()
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
    peer, skipped = start_torch(args.no_torch, Path(__file__), worker_args(args), tmp)
    notes: list[str] = []
    torch_res: dict = {"skipped": skipped} if skipped else {**peer.info, "models": {}}
    try:
        import jax

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
    busy = (busy_start, busy_cores())
    notes += host_notes(plat, busy, torch_res, skipped, modes)
    for name, tm in torch_res.get("models", {}).items():
        if tm.get("params") is not None and tm["params"] != jax_res[name]["params"]:
            notes.append(f"{name}: parameter counts differ (JAX {jax_res[name]['params']:,}, "
                         f"torch {tm['params']:,})")
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
        "device": device_info(dev, plat, torch_res, busy),
        "versions": versions(torch_res),
        "precision": precision(plat, torch_res),
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
    write_results(args.out_dir, "ranking_throughput", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
