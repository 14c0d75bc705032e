"""Text classifier speed: the spam task's BiLSTM and TextTransformer in JAX vs the same models in
PyTorch, interleaved.

    python benchmarks/text_throughput.py                  # both models, ~4 min on 2 cores
    python benchmarks/text_throughput.py --models bilstm --repeats 5
    python benchmarks/text_throughput.py --quick --out-dir /tmp/t   # smoke run

Models (JAX: :class:`mlsd_jax.models.text.BiLSTM` and
:class:`~mlsd_jax.models.text.TextTransformer` with ``configs/spam/model/{bilstm,transformer}
.yaml``; torch: the same layers, widths, activations, dropout and loss, written here), one word
bag of ``--seq-len`` ids (default 64) from a hashed vocabulary of 65,536 buckets (the configs'
``data.word_buckets``; + padding and the OOV row), no side features (the SMS setting):

* ``bilstm``: embeddings 64 -> a left-to-right and a right-to-left LSTM of 64 (JAX:
  ``flax.linen.RNN`` over ``OptimizedLSTMCell`` with ``seq_lengths``; torch: two
  ``nn.LSTM(batch_first=True)``, the backward one over each row's words reversed in place,
  padding kept at the end, exactly as flax's ``flip_sequences`` does) -> max pooling over the
  words -> MLP 64 -> logit; dropout 0.3 on the embeddings and the pooled vector.
* ``transformer``: embeddings 64 + learned positions, LayerNorm, dropout 0.1, 2 pre-LN blocks
  (4 heads, MLP 128, tanh GELU; torch: ``F.scaled_dot_product_attention`` with the padding
  masked as keys and padded queries zeroed as in
  :func:`mlsd_jax.models.layers.dot_product_attention`), final LayerNorm, mean pooling, MLP 64.

Data: simulated. Ids are drawn from a Zipf-like law over the vocabulary, text lengths uniform in
``[4, seq_len]`` with the padding at the end, labels spam with probability 0.15; the speed of a
step does not depend on the values (the LSTM runs every position). Training batches of 64
(``--batch``); a pool of batches is staged on the device beforehand and cycled through.

Arms, all with AdamW (the configs' lr, weight decay 1e-4 on kernels only, warmup + cosine) and
global-norm clipping 1.0; loss: the spam task's sigmoid cross-entropy:

* ``jax``: the framework's ``Trainer.train_step`` (jitted, state donated) and the jitted
  ``predict_fn`` of the serving signature (on encoded ids); for the BiLSTM also ``jax_unroll``,
  the same model with ``unroll=--unroll`` time steps per scan iteration (a speed setting only);
* torch ``eager`` (fused AdamW) and ``compile`` (the WHOLE step -- forward, loss, backward,
  clipping, AdamW -- in ``torch.compile``, ``dynamic=False``).

Same architecture, checked: after timing, the torch worker copies the parameters of each JAX
model into its torch peer and compares the logits on the same ids (inference); the result goes
into the notes, as do both parameter counts (torch's LSTM has two bias vectors per direction
where flax's cell has one).

Measured: training examples/s (steps/s x batch) and inference latency at batch 1 (p50/p99 per
call, each call synchronised). Protocol as ``benchmarks/recsys_throughput.py``
(``benchmarks/_harness.py``): all arms set up and compiled first, then blocks of each arm in turn
for several rounds; medians with min-max over rounds; ratios JAX / torch with the spread of the
per-round paired ratios; the torch peer in a child process. Results go to
``benchmarks/results/text_throughput_<device>.{json,md}`` (``--out-dir`` to change).

PyTorch is optional: without it the torch rows are skipped with the reason. The script imports
neither hydra, omegaconf, grain nor tensorflow.
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
from _harness import (ROOT, RESULTS, JaxArm, RemoteArm, TorchArm, best_of,  # noqa: E402
                      busy_cores, device_info, device_line, fmt, host_notes, load_line,
                      precision, ratio_cell, ratios, read_model_file, serve_torch, start_torch,
                      time_arms, torch_hello, torch_worker_start, versions, versions_line,
                      write_results)

sys.path.insert(0, str(ROOT))

MODELS = ("bilstm", "transformer")
TORCH_MODES = ("eager", "compile")
INFER_SIZES = (1,)
SCHEDULE_STEPS = 10_000  # length of the cosine schedule (only its shape matters here)
CONFIG_FILES = {"bilstm": "spam/model/bilstm.yaml", "transformer": "spam/model/transformer.yaml"}
WORD_BUCKETS = 65_536    # data.word_buckets of both configs
ZIPF_EXPONENT = 1.05
SPAM_RATE = 0.15
MIN_WORDS = 4
JAX_OPTIONAL = "jax_unroll"


# ------------------------------------------------------------------------------------- config


def model_config(name: str, quick: bool) -> dict:
    cfg = read_model_file(ROOT / "configs" / CONFIG_FILES[name])
    cfg.pop("sequence_bags", None)
    if quick:
        cfg.update(embed_dim=16, hidden=(16,))
        cfg.update(lstm_size=16) if name == "bilstm" else cfg.update(mlp_dim=32, num_heads=2)
    return cfg


def optim_config(name: str):
    """The config file's optimizer settings as an ``OptimConfig``."""
    import yaml

    from mlsd_jax.training.optim import OptimConfig

    node = (yaml.safe_load((ROOT / "configs" / CONFIG_FILES[name]).read_text()) or {})["optim"]
    return OptimConfig(lr=float(node["lr"]), weight_decay=float(node["weight_decay"]),
                       warmup_steps=int(node["warmup_steps"]))


def vocab(quick: bool) -> int:
    return 1 + (1000 if quick else WORD_BUCKETS)


def run_settings(args) -> dict:
    if args.quick:
        s = dict(repeats=1, train_target_s=0.15, infer_target_s=0.05, infer_min_calls=3)
    else:
        s = dict(repeats=3, train_target_s=0.6, infer_target_s=0.3, infer_min_calls=20)
    if args.repeats:
        s["repeats"] = args.repeats
    s.update(warmup_steps=1 if args.quick else 2, max_steps=2000, infer_max_calls=2000,
             pool=args.pool, infer_sizes=INFER_SIZES)
    return s


# --------------------------------------------------------------------------------------- data


def make_batch(rng, n: int, seq_len: int, cardinality: int) -> dict:
    """``text [n, seq_len]`` int32 ids (Zipf over ``[1, cardinality)``, 0 = padding at the end),
    ``label`` and ``weight`` float32 ``[n]``."""
    p = np.arange(1, cardinality, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(p / p.sum())
    ids = 1 + np.minimum(np.searchsorted(cdf, rng.random((n, seq_len))), cardinality - 2)
    lengths = rng.integers(min(MIN_WORDS, seq_len), seq_len + 1, n)
    ids = np.where(np.arange(seq_len)[None, :] < lengths[:, None], ids, 0).astype(np.int32)
    return {"text": ids, "label": (rng.random(n) < SPAM_RATE).astype(np.float32),
            "weight": np.ones(n, np.float32)}


def make_data(args, cfg: dict) -> dict:
    rng = np.random.default_rng(0)
    card = vocab(args.quick)
    return {"train": [make_batch(rng, args.batch, args.seq_len, card) for _ in range(cfg["pool"])],
            "infer": {b: {"text": make_batch(rng, b, args.seq_len, card)["text"]}
                      for b in cfg["infer_sizes"]}}


# ---------------------------------------------------------------------------------------- JAX


def build_model(name: str, quick: bool, **overrides):
    from mlsd_jax.models.text import BiLSTM, TextTransformer

    cls = {"bilstm": BiLSTM, "transformer": TextTransformer}[name]
    return cls({"text": vocab(quick)}, {}, sequence_bags=("text",),
               **{**model_config(name, quick), **overrides})


def make_task(model, example_batch: dict):
    """The task for timing, built by hand (no hydra, no data pipeline): the spam task's forward
    on word ids and its loss, a ``serving_default`` signature on encoded ids."""
    import jax
    import jax.numpy as jnp
    import optax

    from mlsd_jax.tasks.base import Signature, Task

    def forward(apply, consts, inputs, *, train):
        logit = apply({"text": inputs["text"]}, {}, train=train)
        return {"logit": logit, "prob": jax.nn.sigmoid(logit)}

    def loss_fn(outputs, batch):
        w = batch["weight"]
        per = optax.sigmoid_binary_cross_entropy(outputs["logit"], batch["label"])
        return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9), {}

    spec = {"text": (("batch", "tokens"), np.int32)}
    signature = Signature(inputs=spec, encoded=spec, outputs={"prob": "float32 [batch]: P(spam)"},
                          predict=lambda apply, consts, x: forward(apply, consts, x, train=False))
    return Task(
        name="text_throughput", model=model, consts={}, forward=forward, loss_fn=loss_fn,
        metrics={}, example_weight=lambda b: jnp.asarray(b["weight"]),
        train_batches=lambda seed, start: iter(()), eval_splits={},
        example_batch={k: v[:1] for k, v in example_batch.items()}, input_keys=("text",),
        signatures={"serving_default": signature}, serving="", target_metric="loss")


def jax_arm(name: str, arm: str, data: dict, args) -> JaxArm:
    overrides = {"unroll": args.unroll} if arm == JAX_OPTIONAL else {}
    model = build_model(name, args.quick, **overrides)
    return JaxArm(make_task(model, data["train"][0]), optim_config(name), args.batch,
                  data["train"], data["infer"], SCHEDULE_STEPS)


# -------------------------------------------------------------------------------------- torch


def torch_modules():
    """The torch peers, defined where torch is importable (in the worker only)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mlsd_jax.models.embedding import table_rows

    class Head(nn.Module):
        """Dropout -> MLP (ReLU, dropout) -> one logit, as the JAX models' ``_head``."""

        def __init__(self, width: int, hidden, dropout: float):
            super().__init__()
            layers, d = [nn.Dropout(dropout)], width
            for h in hidden:
                layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(dropout)]
                d = h
            layers.append(nn.Linear(d, 1))
            self.mlp = nn.Sequential(*layers)

        def forward(self, x):
            return self.mlp(x)[:, 0]

    def max_pool(h, mask):
        low = torch.finfo(h.dtype).min
        top = torch.where(mask[..., None], h, low).amax(dim=1)
        return torch.where(mask.any(dim=1, keepdim=True), top, 0.0)

    def mean_pool(h, mask):
        w = mask.to(h.dtype)
        return (h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1.0)

    class BiLSTM(nn.Module):
        def __init__(self, card: int, embed_dim, lstm_size, hidden, dropout, pooling="max",
                     unroll=1):
            super().__init__()
            self.pooling = pooling
            self.embed = nn.Embedding(table_rows(card), embed_dim)
            self.drop = nn.Dropout(dropout)
            self.fwd = nn.LSTM(embed_dim, lstm_size, batch_first=True)
            self.bwd = nn.LSTM(embed_dim, lstm_size, batch_first=True)
            width = 2 * lstm_size * (2 if pooling == "max_mean" else 1)
            self.head = Head(width, hidden, dropout)

        def forward(self, ids):
            mask = ids > 0
            x = self.drop(self.embed(ids) * mask[..., None])
            steps = ids.shape[1]
            lengths = mask.sum(1, keepdim=True)
            # Each row's words reversed in place, padding left at the end (flip_sequences).
            flip = (torch.arange(steps - 1, -1, -1, device=ids.device)[None, :] + lengths) % steps
            gather = flip[..., None].expand(-1, -1, x.shape[-1])
            f, _ = self.fwd(x)
            b, _ = self.bwd(torch.gather(x, 1, gather))
            b = torch.gather(b, 1, flip[..., None].expand(-1, -1, b.shape[-1]))
            h = torch.cat([f, b], dim=-1)
            parts = []
            if self.pooling in ("max", "max_mean"):
                parts.append(max_pool(h, mask))
            if self.pooling in ("mean", "max_mean"):
                parts.append(mean_pool(h, mask))
            return self.head(torch.cat(parts, dim=-1))

    class Block(nn.Module):
        """Pre-LN block as ``mlsd_jax.models.layers.TransformerBlock``."""

        def __init__(self, d, heads, mlp_dim, dropout):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(d, mlp_dim), nn.Linear(mlp_dim, d)
            self.drop = nn.Dropout(dropout)

        def forward(self, x, mask):
            n, steps, d = x.shape
            y = self.ln1(x)
            q, k, v = (t.view(n, steps, self.heads, d // self.heads).transpose(1, 2)
                       for t in (self.q(y), self.k(y), self.v(y)))
            # An empty text attends over its padding (its outputs are zeroed next), as the JAX
            # attention's finite mask value does, instead of a softmax over nothing (NaN).
            keys = mask | ~mask.any(dim=1, keepdim=True)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
            att = att.transpose(1, 2).reshape(n, steps, d) * mask[..., None]
            x = x + self.drop(self.out(att))
            y = self.fc2(self.drop(F.gelu(self.fc1(self.ln2(x)), approximate="tanh")))
            return x + self.drop(y)

    class TextTransformer(nn.Module):
        def __init__(self, card: int, embed_dim, num_layers, num_heads, mlp_dim, max_len, hidden,
                     dropout, attention_dropout=0.0, pooling="mean"):
            super().__init__()
            if attention_dropout:
                raise ValueError("the torch peer has no attention dropout")
            self.pooling = pooling
            self.embed = nn.Embedding(table_rows(card), embed_dim)
            self.position = nn.Embedding(table_rows(max_len), embed_dim)
            self.norm_in = nn.LayerNorm(embed_dim, eps=1e-6)
            self.drop = nn.Dropout(dropout)
            self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_dim, dropout)
                                        for _ in range(num_layers))
            self.norm_out = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head = Head(embed_dim * (2 if pooling == "max_mean" else 1), hidden, dropout)

        def forward(self, ids):
            mask = ids > 0
            pos = self.position(torch.arange(ids.shape[1], device=ids.device))
            x = self.drop(self.norm_in(self.embed(ids) + pos[None]))
            for block in self.blocks:
                x = block(x, mask)
            h = self.norm_out(x)
            parts = []
            if self.pooling in ("max", "max_mean"):
                parts.append(max_pool(h, mask))
            if self.pooling in ("mean", "max_mean"):
                parts.append(mean_pool(h, mask))
            return self.head(torch.cat(parts, dim=-1))

    return {"bilstm": BiLSTM, "transformer": TextTransformer}


def torch_model(name: str, quick: bool, modules: dict):
    return modules[name](vocab(quick), **model_config(name, quick))


def param_groups(model) -> list[dict]:
    """Weight decay on weight matrices only (JAX: ``decay_params="kernel"``), not on
    embeddings, biases or LayerNorm."""
    decay, rest = [], []
    for n, p in model.named_parameters():
        embedding = n.startswith(("embed", "position"))
        (decay if p.ndim == 2 and not embedding else rest).append(p)
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def torch_arm(name: str, mode: str, data: dict, args, device, modules: dict,
              single_tensor: bool = False) -> TorchArm:
    import torch
    import torch.nn.functional as F

    model = torch_model(name, args.quick, modules)
    arm = TorchArm(model, data["train"], data["infer"], device)

    def loss(batch):
        w = batch["weight"]
        per = F.binary_cross_entropy_with_logits(arm.model(batch["text"]), batch["label"],
                                                 reduction="none")
        return (w * per).sum() / w.sum().clamp(min=1e-9)

    def predict(x):
        return torch.sigmoid(arm.model(x["text"]))

    return arm.use_adamw(loss, predict, mode, optim_config(name), SCHEDULE_STEPS,
                         params=param_groups(arm.model), single_tensor=single_tensor)


def copy_jax_params(name: str, params, model) -> None:
    """The JAX model's parameters into its torch peer (same shapes; torch's ``bias_ih`` = 0)."""
    import torch

    def put(dst, value):
        with torch.no_grad():
            dst.copy_(torch.as_tensor(np.asarray(value, np.float32)).reshape(dst.shape))

    def dense(dst, p):
        put(dst.weight, np.asarray(p["kernel"]).reshape(-1, dst.weight.shape[0]).T)
        put(dst.bias, p["bias"])

    mlp = params["MLP_0"]
    dense_layers = [m for m in model.head.mlp if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(dense_layers):
        dense(layer, mlp[f"Dense_{i}"])
    put(model.embed.weight, params["embed_text"]["embedding"])
    if name == "bilstm":
        for d, lstm in (("fwd", model.fwd), ("bwd", model.bwd)):
            p = params[f"lstm_text_{d}"]
            put(lstm.weight_ih_l0, np.concatenate([p[f"i{g}"]["kernel"] for g in "ifgo"], 1).T)
            put(lstm.weight_hh_l0, np.concatenate([p[f"h{g}"]["kernel"] for g in "ifgo"], 1).T)
            put(lstm.bias_hh_l0, np.concatenate([p[f"h{g}"]["bias"] for g in "ifgo"]))
            put(lstm.bias_ih_l0, np.zeros(lstm.bias_ih_l0.shape))
        return
    put(model.position.weight[:params["position_text"]["embedding"].shape[0]],
        params["position_text"]["embedding"])
    for ln, p in ((model.norm_in, params["input_norm_text"]),
                  (model.norm_out, params["encoder_text"]["LayerNorm_0"])):
        put(ln.weight, p["scale"])
        put(ln.bias, p["bias"])
    for i, block in enumerate(model.blocks):
        p = params["encoder_text"][f"block_{i}"]
        att = p["MultiHeadSelfAttention_0"]
        for lin, key in ((block.q, "query"), (block.k, "key"), (block.v, "value")):
            put(lin.weight, np.asarray(att[key]["kernel"]).reshape(lin.weight.shape[1], -1).T)
            put(lin.bias, np.asarray(att[key]["bias"]).reshape(-1))
        put(block.out.weight, np.asarray(att["out"]["kernel"]).reshape(-1,
                                                                       block.out.weight.shape[0]).T)
        put(block.out.bias, att["out"]["bias"])
        for ln, key in ((block.ln1, "LayerNorm_0"), (block.ln2, "LayerNorm_1")):
            put(ln.weight, p[key]["scale"])
            put(ln.bias, p[key]["bias"])
        dense(block.fc1, p["MLP_0"]["Dense_0"])
        dense(block.fc2, p["MLP_0"]["Dense_1"])


def parity_check(name: str, modules: dict, torch, device) -> dict:
    """Max |logit JAX - logit torch| with the JAX parameters (moved off their initial values)
    copied into the torch peer, on simulated ids (quick sizes; JAX on CPU)."""
    try:
        import flax.linen as nn
        import jax

        rng = np.random.default_rng(5)
        ids = make_batch(rng, 16, 24, vocab(True))["text"]
        ids[0] = 0                                                # an empty text
        model = build_model(name, True)
        params = nn.meta.unbox(model.init(jax.random.key(0), {"text": ids}, {}))["params"]
        params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype),
                              params)
        want = np.asarray(model.apply({"params": params}, {"text": ids}, {}))
        peer = torch_model(name, True, modules).to(device).eval()
        copy_jax_params(name, params, peer)
        with torch.inference_mode():
            got = peer(torch.from_numpy(ids).to(device)).cpu().numpy()
        return {"max_abs_diff": float(np.abs(got - want).max()),
                "max_abs_output": float(np.abs(want).max())}
    except Exception as e:  # noqa: BLE001 -- recorded in the notes
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def torch_worker(args) -> None:
    """Child process: builds the torch arms on request and times blocks."""
    out, torch, device = torch_worker_start()
    cfg = run_settings(args)
    modules = torch_modules()
    data = make_data(args, cfg)

    def setup(model: str, mode: str):
        try:
            arm = torch_arm(model, mode, data, args, device, modules)
            return arm, arm.train(1)
        except Exception:  # noqa: BLE001 -- the compiled multi-tensor AdamW on CPU
            if mode != "compile" or device.type == "cuda":
                raise
            arm = torch_arm(model, mode, data, args, device, modules, single_tensor=True)
            return arm, arm.train(1)

    def checks(_msg) -> dict:
        return {"parity": {m: parity_check(m, modules, torch, device) for m in MODELS}}

    serve_torch(out, setup, torch_hello(torch, device), cfg, {"checks": checks})


def worker_args(args) -> list[str]:
    out = ["--batch", str(args.batch), "--pool", str(args.pool), "--seq-len", str(args.seq_len)]
    if args.repeats:
        out += ["--repeats", str(args.repeats)]
    return out + (["--quick"] if args.quick else [])


# ------------------------------------------------------------------------------------- report


def build_rows(results: dict) -> list[dict]:
    rows = []
    for name, j in results["jax"].items():
        t = results["torch"].get("models", {}).get(name, {}).get("rows", {})
        for meas in ["train"] + [f"infer_{b}" for b in INFER_SIZES]:
            key = "steps_per_s" if meas == "train" else "examples_per_s"
            eager, comp = t.get("eager", {}).get(meas), t.get("compile", {}).get(meas)
            best = best_of([eager, comp], key)
            row = {"model": name, "measurement": meas, "torch_eager": eager, "torch_compile": comp,
                   "batch": None if meas == "train" else int(meas.split("_")[1])}
            for arm, r in j["rows"].items():
                row[arm] = r.get(meas)
                row[f"{arm}_vs_eager"] = ratios(r.get(meas), eager, key)
                row[f"{arm}_vs_compile"] = ratios(r.get(meas), comp, key)
                row[f"{arm}_vs_best_torch"] = ratios(r.get(meas), best, key)
            rows.append(row)
    return rows


def _train_cell(r):
    if not r:
        return "—"
    per_step = r["examples_per_s"] / r["steps_per_s"]
    return (f"{fmt(r['examples_per_s'])} ({fmt(r['steps_per_s_min'] * per_step)}–"
            f"{fmt(r['steps_per_s_max'] * per_step)})")


def _infer_cell(r):
    return "—" if not r else f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms"


def markdown(results: dict) -> str:
    s, t = results["settings"], results["torch"]
    lines = [
        "# Text classifier throughput: JAX vs PyTorch (BiLSTM, small transformer)", "",
        f"- command: `{results['command']}`", f"- date: {results['date']}",
        device_line(results["device"], t), versions_line(results["versions"]),
        f"- precision: {results['precision']}",
        f"- data: {s['data']}", f"- models: {s['models_text']}",
        f"- training: batch {s['batch']}, sequence length {s['seq_len']}, pool of {s['pool']} "
        "staged batches; AdamW (the configs' lr, wd 1e-4 on kernels), warmup + cosine, grad "
        "clip 1.0. JAX: `Trainer.train_step`; torch.compile: the whole step (forward, backward, "
        f"clipping, optimizer), {t.get('compile_optimizer', '—')}",
        f"- timing: arms interleaved, {s['repeats']} rounds of ~{s['train_target_s']} s (train) "
        f"and ~{s['infer_target_s']} s (inference) blocks each; median (min–max over rounds); "
        "ratio = JAX / torch medians (min–max of the per-round paired ratios), > 1: JAX faster; "
        "\"faster torch\" pairs each round with the faster of eager and compile"
        + (" (--quick)" if s["quick"] else ""),
        f"- load average (1, 5, 15 min) at the start: {results['load_avg_start']}",
        load_line(results), "",
        "Training (examples/s):", "",
        "| model | arm | JAX | torch eager | torch.compile | JAX / eager | JAX / compile | "
        "**JAX / faster torch** |", "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results["rows"] if r["measurement"] == "train"):
        for arm in results["jax"][r["model"]]["rows"]:
            lines.append(f"| {r['model']} | {arm} | {_train_cell(r[arm])} | "
                         f"{_train_cell(r['torch_eager'])} | {_train_cell(r['torch_compile'])} | "
                         f"{ratio_cell(r[f'{arm}_vs_eager'])} | "
                         f"{ratio_cell(r[f'{arm}_vs_compile'])} | "
                         f"{ratio_cell(r[f'{arm}_vs_best_torch'])} |")
    lines += ["", "Inference latency p50 / p99 per call (each call synchronised):", "",
              "| model | batch | arm | JAX | torch eager | torch.compile | examples/s JAX / "
              "eager | JAX / compile |", "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results["rows"] if r["measurement"] != "train"):
        for arm in results["jax"][r["model"]]["rows"]:
            if r.get(arm) is None:
                continue
            lines.append(f"| {r['model']} | {r['batch']} | {arm} | {_infer_cell(r[arm])} | "
                         f"{_infer_cell(r['torch_eager'])} | {_infer_cell(r['torch_compile'])} | "
                         f"{ratio_cell(r[f'{arm}_vs_eager'])} | "
                         f"{ratio_cell(r[f'{arm}_vs_compile'])} |")
    lines += ["", "| model | params JAX | params torch | first train step (compile), s: "
              "JAX arms / eager / torch.compile |", "|---|---|---|---|"]
    for name, j in results["jax"].items():
        tm = t.get("models", {}).get(name, {})
        first = [r["train"]["first_call_s"] for r in j["rows"].values()]
        first += [tm.get("rows", {}).get(m, {}).get("train", {}).get("first_call_s")
                  for m in TORCH_MODES]
        tp = tm.get("params")
        lines.append(f"| {name} | {j['params']:,} | {'—' if tp is None else f'{tp:,}'} | "
                     + " / ".join("—" if x is None else f"{x:.1f}" for x in first) + " |")
    if results["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main


def bench_model(name: str, args, cfg: dict, peer, modes, notes: list):
    data = make_data(args, cfg)
    jax_arms = ["jax"] + ([JAX_OPTIONAL] if name == "bilstm" and args.unroll > 1 else [])
    arms, first, infer_first, params = {}, {}, {}, None
    for a in jax_arms:
        arms[a] = jax_arm(name, a, data, args)
        first[a], infer_first[a] = arms[a].warm_up(cfg)
        params = arms[a].params
        print(f"{a} {name}: ready (first step {first[a]:.1f} s)", flush=True)
    tarms = peer.setup(name, modes, notes) if peer is not None else {}
    for m, ans in tarms.items():
        arms[m] = RemoteArm(peer, name, m)
        first[m] = ans["first_call_s"]
        infer_first[m] = {b: ans["infer_first_call_s"][str(b)] for b in cfg["infer_sizes"]}
    rows, loads = time_arms(arms, cfg, first_train=first, first_infer=infer_first,
                            items_per_step=args.batch, item="examples", unit="examples")
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
    p.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--seq-len", type=int, default=64, help="ids per text (default 64)")
    p.add_argument("--pool", type=int, default=4, help="distinct training batches cycled through")
    p.add_argument("--repeats", type=int, default=None, help="rounds of interleaved blocks")
    p.add_argument("--unroll", type=int, default=8,
                   help="time steps per scan iteration of the jax_unroll BiLSTM arm (1: no arm)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--torch-modes", nargs="+", choices=TORCH_MODES, default=None,
                   help="torch arms (default: both; eager only with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: widths 16, a 1,000-bucket vocabulary, 1 short round, no "
                   "torch.compile")
    p.add_argument("--no-torch", action="store_true", help="JAX rows only")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.batch < 1 or args.seq_len < MIN_WORDS or args.unroll < 1:
        p.error(f"expected --batch >= 1, --seq-len >= {MIN_WORDS}, --unroll >= 1")
    modes = args.torch_modes or (["eager"] if args.quick else list(TORCH_MODES))

    if args.torch_worker:
        torch_worker(args)
        return 0

    t_start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    from mlsd_jax.utils.xla_flags import configure_jax

    configure_jax()
    busy_start = busy_cores()
    tmp = Path(tempfile.mkdtemp(prefix="text_throughput_"))
    peer, skipped = start_torch(args.no_torch, Path(__file__), worker_args(args), tmp)
    notes: list[str] = []
    torch_res: dict = {"skipped": skipped} if skipped else {**peer.info, "models": {}}
    try:
        import jax

        plat = jax.default_backend()
        cfg = run_settings(args)
        jax_res = {}
        for name in args.models:
            jax_res[name], tm = bench_model(name, args, cfg, peer, modes, notes)
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
                         f"torch {tm['params']:,})"
                         + ("; torch's nn.LSTM keeps two bias vectors per direction (bias_ih, "
                            "bias_hh), flax's cell one" if name == "bilstm" else ""))
    parity = torch_res.get("parity", {})
    if parity:
        notes.append("parity check, the JAX parameters copied into the torch peer (widths 16, "
                     "24 ids, an empty text included; inference), largest |JAX - torch| logit "
                     "difference: " + "; ".join(
                         f"{m} {v['max_abs_diff']:.1e} (logits up to {v['max_abs_output']:.2g})"
                         if "error" not in v else f"{m} failed: {v['error']}"
                         for m, v in parity.items()))
    optimizers = {m: k for tm in torch_res.get("models", {}).values()
                  for m, k in tm.get("optimizer", {}).items()}
    torch_res["compile_optimizer"] = optimizers.get("compile", "—")
    if optimizers:
        notes.append("torch optimizers: " + "; ".join(f"{m}: {k}" for m, k in optimizers.items())
                     + "; LambdaLR with the same warmup + cosine schedule; clip_grad_norm_; "
                     "torch.compile(dynamic=False, inductor fallback_random=True); compiled "
                     "predict is a separate torch.compile of the serving call")
    if "bilstm" in jax_res and args.unroll > 1:
        notes.append(f"jax_unroll: the BiLSTM with unroll={args.unroll} (time steps per "
                     "iteration of the scan; same values), a speed setting tried against the "
                     "config's unroll=1")
    if plat == "cpu":
        notes.append("JAX CPU settings from mlsd_jax.utils.xla_flags.configure_jax(): XLA_FLAGS="
                     f"`{os.environ.get('XLA_FLAGS', '')}`")
    notes.append("JAX step: mlsd_jax Trainer.train_step (also returns loss, grad norm, lr and a "
                 "finite flag, and keeps the old state on a non-finite step); predict: "
                 "mlsd_jax.tasks.base.predict_fn of the serving signature on encoded ids (the "
                 "SavedModel's tokeniser is not timed)")

    card = vocab(args.quick)
    data_text = (f"simulated: Zipf ids (exponent {ZIPF_EXPONENT}) over {card - 1:,} hashed word "
                 f"buckets, text lengths uniform in [{MIN_WORDS}, {args.seq_len}], padding at "
                 f"the end, spam rate {SPAM_RATE}; training batch {args.batch}, inference batch "
                 + ", ".join(map(str, INFER_SIZES)))
    models_text = "; ".join(f"{n} {model_config(n, args.quick)}" for n in args.models)
    loads = [x for r in jax_res.values() for x in r["load_avg_1min"]]
    results = {
        "benchmark": "text_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/text_throughput.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "device": device_info(dev, plat, torch_res, busy),
        "versions": versions(torch_res),
        "precision": precision(plat, torch_res),
        "load_avg_start": load_start,
        "settings": {**cfg, "batch": args.batch, "seq_len": args.seq_len, "torch_modes": modes,
                     "unroll": args.unroll, "quick": args.quick,
                     "xla_flags": os.environ.get("XLA_FLAGS", ""), "data": data_text,
                     "models_text": models_text, "simulated": True},
        "model_configs": {n: model_config(n, args.quick) for n in args.models},
        "load_avg_1min": loads, "jax": jax_res, "torch": torch_res, "notes": notes,
    }
    results["rows"] = build_rows(results)
    results["wall_s"] = time.perf_counter() - t_start
    write_results(args.out_dir, "text_throughput", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
