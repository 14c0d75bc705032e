"""Ranking speed: our JAX rankers vs the same models written in PyTorch, in one run.

    python benchmarks/ranking_throughput.py                        # MSLR sample (fetched and cached)
    python benchmarks/ranking_throughput.py --store DIR            # a converted store, no network
    python benchmarks/ranking_throughput.py --export-store DIR     # write that store, then exit
    python benchmarks/ranking_throughput.py --quick --out-dir /tmp/r

For ``ListwiseAttentionRanker`` and ``MLPRanker`` (sizes read from ``configs/model/``) with the
LambdaRank loss (pairwise logistic x DCG lambda weights) and AdamW (``OptimConfig`` defaults:
warmup + cosine schedule, weight decay 1e-4, global-norm clipping 1.0) it measures

* training throughput: the framework's own ``Trainer.train_step`` (jitted, state donated) on
  fixed ``[B, 128, 136]`` batches of real MSLR-WEB10K lists; steps/s and docs/s (``B * 128``
  slots per step, padding included), median over repeats;
* inference: jitted predict (the fitted ``log1p_standardize`` transform + the model,
  ``train=False``) at 1, 16 and 256 lists per call; p50/p99 latency and lists/s;
* the PyTorch peer: the same architectures, loss, optimizer and clipping in torch, eager and
  ``torch.compile`` (a compile failure is recorded with its reason), with the same batches on the
  same kind of device; parameter counts of both are reported side by side.

Inputs of both frameworks are staged on the device beforehand (a pool of batches cycled through),
so the figures are the compute of the step or the call, not host transfers. Neither framework
synchronises inside a timed run of training steps (the clock stops after a final sync); every
inference call is synchronised on its output.

Ratios are JAX / torch (> 1 means JAX is faster). Results go to
``benchmarks/results/ranking_throughput_<device>.{json,md}`` (``--out-dir`` to change).

PyTorch is optional (it is not a dependency of mlsd_jax): without it the torch rows are skipped
and the reason is written into the results. The torch side runs in a child process (same
batches, rebuilt from the same seed) so the two frameworks never share threads, GPU memory or
CUDA libraries. The script imports neither hydra, omegaconf, grain nor tensorflow, so it runs on
a machine with only jax/flax/optax/orbax/numpy/tqdm (and torch).

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
MODELS = ("attn_ranker", "mlp_ranker")
SCHEDULE_STEPS = 10_000  # length of the cosine schedule (only its shape matters here)


# ------------------------------------------------------------------------------------- config


def read_model_config(name: str) -> dict:
    """``configs/model/<name>.yaml`` (flat ``key: value`` lines) without a YAML dependency."""
    out = {}
    for raw in (ROOT / "configs" / "model" / f"{name}.yaml").read_text().splitlines():
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
    """Time budgets: a run of timed steps lasts about ``train_target_s``; each batch size of
    inference gets about ``infer_target_s`` of calls."""
    if args.quick:
        s = dict(repeats=3, train_target_s=0.4, infer_target_s=0.5, infer_min_calls=10)
    elif on_gpu:
        s = dict(repeats=5, train_target_s=0.5, infer_target_s=0.5, infer_min_calls=50)
    else:
        s = dict(repeats=5, train_target_s=1.5, infer_target_s=2.5, infer_min_calls=20)
    s.update(warmup_steps=3, max_steps=2000, infer_max_calls=2000, pool=args.pool)
    return s


# --------------------------------------------------------------------------------------- data


def export_store(out_dir: Path) -> Path:
    """Copies the converted MSLR-WEB10K training sample into ``out_dir`` (fetches it if needed)."""
    from mlsd_jax.data.fetch import fetch_packaged
    from mlsd_jax.data.letor import open_letor
    from mlsd_jax.data.ranking import MSLR_SAMPLE_TRAIN

    store = open_letor(fetch_packaged(MSLR_SAMPLE_TRAIN), num_features=NUM_FEATURES,
                       progress=False)
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


def all_data(store, batch_size: int, pool: int) -> dict:
    return {"stats": fit_transform(store),
            "train": make_batches(store, batch_size, pool, seed=0),
            "infer": {b: make_batches(store, b, 1, seed=100 + b)[0] for b in INFER_SIZES}}


# ------------------------------------------------------------------------------------- timing


def measure_steps(run_n, sync, cfg: dict) -> dict:
    """Throughput of ``run_n(n)`` (n steps dispatched back to back), median over repeats."""
    t = time.perf_counter()
    run_n(1)
    sync()
    first = time.perf_counter() - t
    run_n(cfg["warmup_steps"])
    sync()
    t = time.perf_counter()
    run_n(3)
    sync()
    per = (time.perf_counter() - t) / 3
    n = int(min(max(math.ceil(cfg["train_target_s"] / max(per, 1e-6)), 5), cfg["max_steps"]))
    rates = []
    for _ in range(cfg["repeats"]):
        t = time.perf_counter()
        run_n(n)
        sync()
        rates.append(n / (time.perf_counter() - t))
    return {"steps_per_s": float(np.median(rates)), "repeats_steps_per_s": rates,
            "steps_per_repeat": n, "first_call_s": first}


def measure_calls(call, cfg: dict) -> dict:
    """Latency of synchronised calls (``call()`` returns when the output is ready)."""
    t = time.perf_counter()
    call()
    first = time.perf_counter() - t
    for _ in range(3):
        call()
    lat = []
    start = time.perf_counter()
    while (len(lat) < cfg["infer_min_calls"]
           or time.perf_counter() - start < cfg["infer_target_s"]) and len(lat) < cfg["infer_max_calls"]:
        t = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t)
    lat = np.asarray(lat)
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "mean_ms": float(lat.mean() * 1e3), "calls": int(lat.size), "first_call_s": first}


def with_rates(res: dict, lists_per_call: int, docs_per_unit: int, key: str) -> dict:
    if key == "train":
        res["docs_per_s"] = res["steps_per_s"] * docs_per_unit
    else:
        res["lists_per_s"] = lists_per_call / (res["mean_ms"] / 1e3)
    return res


# ---------------------------------------------------------------------------------------- JAX


def run_jax(name: str, model_cfg: dict, data: dict, args, cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from mlsd_jax.losses import lambdarank_loss
    from mlsd_jax.models import ListwiseAttentionRanker, MLPRanker
    from mlsd_jax.sharding import MeshConfig, make_mesh
    from mlsd_jax.tasks.base import Task
    from mlsd_jax.tasks.ranking import forward
    from mlsd_jax.training.optim import OptimConfig
    from mlsd_jax.training.trainer import Trainer, TrainerConfig

    model = (ListwiseAttentionRanker if name == "attn_ranker" else MLPRanker)(**model_cfg)
    pool = data["train"]
    task = Task(
        name="ranking", model=model, consts={"features": data["stats"]}, forward=forward,
        loss_fn=lambda scores, batch: lambdarank_loss(scores, batch["label"], where=batch["mask"]),
        metric_fns={}, example_weight=lambda b: jnp.any(b["mask"], -1).astype(jnp.float32),
        train_batches=lambda seed, start: iter(()), eval_splits={}, example_batch=pool[0],
        input_keys=("features", "mask"), export_signature={}, target_metric="ndcg@10")
    mesh = make_mesh(MeshConfig(num_devices=1))
    trainer = Trainer(task, TrainerConfig(max_steps=SCHEDULE_STEPS, batch_size=args.batch,
                                          progress=False), OptimConfig(), mesh)
    state = trainer.init_state()
    n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    staged = [trainer.put_batch(b) for b in pool]
    rng = jax.device_put(jax.random.key(0), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    box = {"state": state, "i": 0, "metrics": None}

    def run_n(n):
        st, i = box["state"], box["i"]
        for _ in range(n):
            st, box["metrics"] = trainer.train_step(st, staged[i % len(staged)], rng)
            i += 1
        box["state"], box["i"] = st, i

    def sync():
        jax.block_until_ready((box["state"], box["metrics"]))

    out = {"params": n_params, "rows": {}}
    train = measure_steps(run_n, sync, cfg)
    out["rows"]["train"] = with_rates(train, args.batch, args.batch * LIST_SIZE, "train")
    out["final_loss"] = float(box["metrics"]["train/loss"])

    state = box["state"]
    predict = jax.jit(lambda p, c, f, m: task.predict(p, c, {"features": f, "mask": m}))
    for b in INFER_SIZES:
        x = data["infer"][b]
        f, m = jax.device_put(x["features"]), jax.device_put(x["mask"])
        call = lambda: jax.block_until_ready(predict(state.params, state.consts, f, m))  # noqa: E731
        out["rows"][f"infer_{b}"] = with_rates(measure_calls(call, cfg), b, b * LIST_SIZE, "infer")
    return out


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
            x = self.transform(x)
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
            x = self.transform(x)
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


def torch_worker(args) -> None:
    """Child process: every torch measurement; writes a JSON file to ``args.torch_worker``."""
    import torch

    from mlsd_jax.training.optim import OptimConfig

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    cfg = run_settings(args, on_gpu)
    store = open_store(args.store)
    data = all_data(store, args.batch, cfg["pool"])
    TorchMLPRanker, TorchAttentionRanker, lambdarank = torch_modules()
    ocfg = OptimConfig()
    result = {"device": torch.cuda.get_device_name(0) if on_gpu else cpu_model(),
              "device_type": device.type, "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "tf32": bool(on_gpu and torch.backends.cuda.matmul.allow_tf32),
              "models": {}, "loss_check": loss_check(lambdarank, torch, device)}
    sync = (lambda: torch.cuda.synchronize()) if on_gpu else (lambda: None)
    dev = lambda b: {k: torch.from_numpy(v).to(device) for k, v in b.items()}  # noqa: E731

    for name in args.models:
        mcfg = read_model_config(name)
        cls = TorchAttentionRanker if name == "attn_ranker" else TorchMLPRanker
        per_model = {"rows": {}}
        staged = [dev(b) for b in data["train"]]
        for mode in ("eager", "compile"):
            model = cls(data["stats"], NUM_FEATURES, **mcfg).to(device)
            per_model["params"] = sum(p.numel() for p in model.parameters())
            opt = torch.optim.AdamW(model.parameters(), lr=ocfg.lr, betas=(ocfg.b1, ocfg.b2),
                                    weight_decay=ocfg.weight_decay, eps=1e-8)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: warmup_cosine(s, ocfg) / ocfg.lr)

            def fwd_loss(f, y, m, model=model):
                return lambdarank(model(f, m), y, m)

            def predict(f, m, model=model):
                return model(f, m)

            if mode == "compile":
                fwd_loss = torch.compile(fwd_loss, dynamic=False)
                predict = torch.compile(predict, dynamic=False)
            box = {"i": 0, "loss": None}

            def run_n(n, fwd_loss=fwd_loss, model=model, opt=opt, sched=sched):
                model.train()
                for _ in range(n):
                    b = staged[box["i"] % len(staged)]
                    box["i"] += 1
                    opt.zero_grad(set_to_none=True)
                    loss = fwd_loss(b["features"], b["label"], b["mask"])
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), ocfg.clip_norm)
                    opt.step()
                    sched.step()
                    box["loss"] = loss

            rows = {}
            try:
                train = measure_steps(run_n, sync, cfg)
                rows["train"] = with_rates(train, args.batch, args.batch * LIST_SIZE, "train")
                per_model[f"final_loss_{mode}"] = float(box["loss"])
                model.eval()
                for b in INFER_SIZES:
                    x = dev(data["infer"][b])

                    def call(x=x, predict=predict):
                        with torch.inference_mode():
                            out = predict(x["features"], x["mask"])
                        sync()
                        return out

                    rows[f"infer_{b}"] = with_rates(measure_calls(call, cfg), b, b * LIST_SIZE, "infer")
            except Exception as e:  # noqa: BLE001 -- recorded, the other rows still run
                if mode != "compile":
                    raise
                per_model["compile_error"] = f"{type(e).__name__}: {str(e).strip()[:400]}"
                print(f"torch.compile failed for {name}: {per_model['compile_error']}", flush=True)
            per_model["rows"][mode] = rows
            print(f"torch {mode} {name}: done", flush=True)
        result["models"][name] = per_model
    Path(args.torch_worker).write_text(json.dumps(result, indent=1))


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


def run_torch(args) -> dict:
    if importlib.util.find_spec("torch") is None:
        return {"skipped": "PyTorch is not installed (pip install torch); torch rows skipped"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--torch-worker", str(out),
               "--batch", str(args.batch), "--pool", str(args.pool), "--models", *args.models]
        if args.store:
            cmd += ["--store", str(args.store)]
        if args.quick:
            cmd.append("--quick")
        # The child uses JAX only for the loss check; fresh compiler caches make the
        # torch.compile first-call time a cold compile, as JAX's is.
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"),
                   TRITON_CACHE_DIR=str(Path(tmp) / "triton"))
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=True)
        sys.stdout.write(proc.stdout)
        if proc.returncode or not out.is_file():
            tail = (proc.stderr or "").strip().splitlines()[-15:]
            return {"skipped": f"torch worker failed (exit {proc.returncode}): " + " | ".join(tail)}
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t
        return res


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


def ratio(jax_row, torch_row, key):
    if not jax_row or not torch_row:
        return None
    return jax_row[key] / torch_row[key]


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
                         "ratio_vs_eager": ratio(jr, te, metric),
                         "ratio_vs_compile": ratio(jr, tc, metric), "ratio_metric": metric})
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
        return f"{_fmt(r['steps_per_s'])} steps/s · {_fmt(r['docs_per_s'])} docs/s"
    return f"p50 {_fmt(r['p50_ms'])} ms · p99 {_fmt(r['p99_ms'])} ms · {_fmt(r['lists_per_s'])} lists/s"


def _ratio(x):
    return "—" if x is None else f"**{x:.2f}×**"


def markdown(results: dict) -> str:
    d, v, s, t = results["device"], results["versions"], results["settings"], results["torch"]
    lines = [
        f"# Ranking throughput: JAX (mlsd_jax) vs PyTorch — {d['tag']}",
        "",
        f"- device: JAX `{d['jax']}` ({d['jax_platform']}); torch `{d.get('torch', '—')}` "
        f"({d.get('torch_device_type', '—')}); host {d['host_cpus']} CPU cores ({d['host_cpu']})",
        f"- versions: python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, "
        f"optax {v['optax']}, numpy {v['numpy']}, torch {v.get('torch', '—')}",
        f"- precision: {results['precision']}",
        f"- data: {s['data']}; batches [B, {LIST_SIZE}, {NUM_FEATURES}], train B = {s['batch']} lists "
        f"({s['batch'] * LIST_SIZE} doc slots/step, padding included), pool of {s['pool']} batches "
        f"staged on the device",
        f"- training: LambdaRank (pairwise logistic × DCG lambda weights), AdamW (lr 1e-3, warmup + "
        f"cosine, wd 1e-4), grad clip 1.0; median of {s['repeats']} runs of "
        f"~{s['train_target_s']} s; inference: synchronised calls, train=False",
        "- ratio = JAX / torch throughput (> 1: JAX faster)",
        "",
        "| model | measurement | JAX | torch eager | torch.compile | JAX / eager | JAX / compile |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        what = (f"train, B={r['batch_lists']}" if r["measurement"] == "train"
                else f"predict, {r['batch_lists']} list{'s' if r['batch_lists'] > 1 else ''}")
        lines.append(f"| {r['model']} | {what} | {_cell(r['jax'])} | {_cell(r['torch_eager'])} | "
                     f"{_cell(r['torch_compile'])} | {_ratio(r['ratio_vs_eager'])} | "
                     f"{_ratio(r['ratio_vs_compile'])} |")
    lines += ["", "| model | params JAX | params torch | first train step (compile) JAX / eager / "
              "torch.compile, s |", "|---|---|---|---|"]
    for name, j in results["jax"].items():
        tm = t.get("models", {}).get(name, {})
        first = [j["rows"]["train"]["first_call_s"]] + [
            tm.get("rows", {}).get(mode, {}).get("train", {}).get("first_call_s")
            for mode in ("eager", "compile")]
        tp = tm.get("params")
        mark = "" if tp is None or tp == j["params"] else " (differs)"
        lines.append(f"| {name} | {j['params']:,} | {'—' if tp is None else f'{tp:,}'}{mark} | "
                     + " / ".join("—" if x is None else f"{x:.1f}" for x in first) + " |")
    if results["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="a converted query store (features.npy, labels.npy, "
                   "qid_offsets.npy, qids.npy, meta.json); default: the MSLR sample (fetched)")
    p.add_argument("--export-store", metavar="DIR",
                   help="write the MSLR-WEB10K training sample's store into DIR and exit")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--batch", type=int, default=64, help="training batch size in lists")
    p.add_argument("--pool", type=int, default=8, help="distinct training batches cycled through")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--quick", action="store_true", help="fewer repeats, shorter timed runs")
    p.add_argument("--no-torch", action="store_true", help="JAX rows only")
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.export_store:
        out = export_store(Path(args.export_store))
        size = sum((out / n).stat().st_size for n in STORE_FILES)
        print(f"wrote {out} ({size / 2**20:.1f} MiB)")
        return 0
    if args.torch_worker:
        torch_worker(args)
        return 0

    t_start = time.perf_counter()
    busy_start = busy_cores()  # nothing of ours runs yet: this is other work on the host
    # Build the data and run the torch child before JAX touches the accelerator.
    store = open_store(args.store)
    print(f"torch side ({'skipped' if args.no_torch else 'child process'}) ...", flush=True)
    torch_res = ({"skipped": "--no-torch"} if args.no_torch else run_torch(args))

    import flax
    import jax
    import jaxlib
    import optax

    plat = jax.default_backend()  # initialises the JAX backend, after the torch child is done
    cfg = run_settings(args, plat != "cpu")

    data = all_data(store, args.batch, cfg["pool"])
    jax_res = {}
    for name in args.models:
        jax_res[name] = run_jax(name, read_model_config(name), data, args, cfg)
        print(f"jax {name}: done", flush=True)

    dev = jax.devices()[0]
    busy_end = busy_cores()
    notes = []
    busy = [b for b in (busy_start, busy_end) if b is not None]
    if plat == "cpu" and busy and max(busy) > 0.25:
        notes.append(f"other work kept {max(busy):.1f} of {os.cpu_count()} cores busy before or "
                     "after the run: CPU figures are disturbed (torch's OpenMP kernels most)")
    if "skipped" in torch_res:
        notes.append(f"torch rows skipped: {torch_res['skipped']}")
    for name, tm in torch_res.get("models", {}).items():
        if "compile_error" in tm:
            notes.append(f"torch.compile failed for {name}, compile rows skipped: {tm['compile_error']}")
        if tm.get("params") != jax_res[name]["params"]:
            notes.append(f"{name}: parameter counts differ (JAX {jax_res[name]['params']:,}, "
                         f"torch {tm.get('params'):,})")
    if torch_res.get("device_type") and torch_res["device_type"] != ("cpu" if plat == "cpu" else "cuda"):
        notes.append(f"JAX runs on {plat} but torch on {torch_res['device_type']}: ratios compare "
                     "different devices")
    lc = torch_res.get("loss_check", {})
    if "abs_diff" in lc:
        notes.append(f"loss check: torch LambdaRank {lc['torch']:.6f} vs mlsd_jax "
                     f"{lc['jax']:.6f} on the same random scores (|diff| {lc['abs_diff']:.1e})")
    notes.append("GELU: flax `nn.gelu` (tanh approximation) in JAX, torch's `\"gelu\"` (erf) in the "
                 "torch TransformerEncoderLayer; attention dropout 0 in both (config)")
    notes.append("torch optimizer: torch.optim.AdamW (default implementation), "
                 "clip_grad_norm_, LambdaLR with the same warmup + cosine schedule; torch.compile "
                 "covers forward + loss (+ its backward), dynamic=False; the optimizer step runs eager")
    notes.append("JAX step: mlsd_jax Trainer.train_step (also returns loss, grad norm and lr)")

    results = {
        "benchmark": "ranking_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": {"tag": device_tag(dev.device_kind, plat), "jax": dev.device_kind,
                   "jax_platform": plat, "torch": torch_res.get("device"),
                   "torch_device_type": torch_res.get("device_type"),
                   "host_cpus": os.cpu_count(), "torch_threads": torch_res.get("threads"),
                   "other_busy_cores_before_after": [busy_start, busy_end],
                   "host_cpu": cpu_model(),
                   "machine": platform.platform()},
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "optax": optax.__version__, "numpy": np.__version__,
                     "torch": torch_res.get("torch")},
        "precision": ("float32; JAX default matmul precision (XLA may use TF32 on GPU); torch "
                      f"allow_tf32={torch_res.get('tf32')}" if plat != "cpu"
                      else "float32 (CPU, no TF32) in both"),
        "settings": {**cfg, "batch": args.batch, "list_size": LIST_SIZE,
                     "num_features": NUM_FEATURES, "quick": args.quick,
                     "data": (f"MSLR-WEB10K Fold1 training sample, {len(store)} queries, "
                              f"{int(np.sum(store.list_sizes))} docs")},
        "model_configs": {n: read_model_config(n) for n in args.models},
        "jax": jax_res, "torch": torch_res, "notes": notes,
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
