"""Image classifier speed: ResNets (:func:`mlsd_jax.models.vision.resnet`) in JAX under several
XLA:CPU flag sets vs the same networks in PyTorch, interleaved, on real Fashion-MNIST batches.

    python benchmarks/vision_throughput.py              # resnet20 and resnet18, ~20 min on 2 cores
    python benchmarks/vision_throughput.py --models resnet20 --repeats 5   # ~5 min on 2 cores
    python benchmarks/vision_throughput.py --models resnet20 --flag-sets xla_default ynn_no_conv
    python benchmarks/vision_throughput.py --quick --out-dir /tmp/v   # smoke run, ~30 s

Models: ``resnet20`` (CIFAR-style, stages of 16, 32, 64 channels, 3 basic blocks each) and
``resnet18`` (stages of 64-512, 2 basic blocks each), both with the ``small`` stem (one 3x3/1
conv, no pooling) on 28x28x1 images, 10 classes. JAX: :func:`~mlsd_jax.models.vision.resnet`
(flax linen, NHWC). PyTorch: the same network written here -- 3x3 convs without bias, BatchNorm
(momentum 0.1 = flax's 0.9, eps 1e-5) and ReLU, a 1x1 conv + BatchNorm projection where the
shape changes, the last BatchNorm of each residual branch starting at zero, global average
pooling, a linear head; He-normal (fan-out) conv kernels, truncated LeCun-normal head kernel,
zero biases, as the JAX model initialises them; ``channels_last`` memory format. The parameter
counts must be equal (the script stops otherwise). One difference that does not change the
work: a stride-2 3x3 conv on an even size pads (0, 1) in JAX (``SAME``) and (1, 1) in torch.

Data: real Fashion-MNIST (``mlsd_jax.data.vision.load_fashion_mnist``, the training split),
uint8 ``[B, 28, 28]`` scaled to [0, 1] and standardised with the training split's pixel mean and
standard deviation, ``[B, 28, 28, 1]`` (torch: ``[B, 1, 28, 28]`` in ``channels_last``). A pool
of ``--pool`` consecutive training batches is staged in each process beforehand and cycled
through; batch-1 inference uses the first validation image.

Training step (both frameworks): softmax cross-entropy with label smoothing 0.1, SGD with
momentum 0.9 at a constant learning rate 0.1, weight decay 5e-4 added to the gradient of the
conv and linear kernels (torch ``SGD(weight_decay=...)`` on those; JAX
``optax.add_decayed_weights`` masked to them, then ``optax.sgd``), BatchNorm running statistics
updated. Arms:

* ``jax[<flag set>]``: one ``jax.jit`` step (``value_and_grad`` + optax update + the new
  ``batch_stats``; state donated) and a jitted ``apply(train=False)`` for inference, each arm in
  its own process started with the flag set's ``XLA_FLAGS`` (:data:`FLAG_SETS`; XLA reads them
  once, at backend start-up). Flag names were taken from the installed jaxlib: the
  ``xla_cpu_*`` options related to convolutions are ``xla_cpu_experimental_ynn_fusion_type``
  (YNNPACK; ``individual_convolution`` is the fusion type that hands each convolution to it),
  ``xla_cpu_use_onednn`` / ``xla_cpu_experimental_onednn_fusion_type`` (oneDNN) and
  ``xla_cpu_multi_thread_eigen`` (Eigen's threaded convolutions, the fallback path). The
  choice between YNNPACK and Eigen convolutions is made when XLA emits its thunks: the
  optimised HLO text of the step is the same with or without ``-individual_convolution`` (and
  with ``xla_cpu_use_onednn=true`` added), only the timings differ;
* torch ``eager`` (fused SGD where this torch has it on CPU, else ``foreach``) and ``compile``
  (the WHOLE step -- forward, loss, backward and ``optimizer.step()`` with the ``foreach`` SGD --
  in one ``torch.compile(dynamic=False)``; the inference call is a separate ``torch.compile``);
  both with all host cores (``torch.set_num_threads(os.cpu_count())``).

Measured: training images/s (steps/s x batch) and batch-1 inference latency (p50/p99 over about
``--infer-calls`` calls per arm, each call synchronised; torch under ``inference_mode`` in eval
mode). Protocol as the other throughput benchmarks (``benchmarks/_harness.py``): every arm set
up, compiled and warmed first (one after the other; all at once with ``--quick``), then blocks of each arm in turn for several rounds (the order
rotates each round); medians with min-max over rounds; ratios JAX / torch with the spread of the
per-round paired ratios. Every arm lives in a child process (this script started with
``--worker``) answering one JSON command per line. Results go to
``benchmarks/results/vision_throughput_<device>.{json,md}`` (``--out-dir`` to change).

PyTorch is optional: without it the torch rows are skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (ROOT, RESULTS, RemoteArm, TorchArm, TorchPeer, best_of,  # noqa: E402
                      busy_cores, compile_kwargs, cpu_model, device_info, device_line, fmt,
                      host_notes, interleave, load_line, precision, ratio_cell, ratios, serve_torch,
                      torch_hello, torch_worker_start, train_row, infer_row, versions,
                      versions_line, write_results)

sys.path.insert(0, str(ROOT))
from mlsd_jax.utils.xla_flags import CPU_XLA_FLAGS  # noqa: E402  (imports os only)

MODELS = ("resnet20", "resnet18")
TORCH_MODES = ("eager", "compile")
NUM_CLASSES = 10
LR, MOMENTUM, WEIGHT_DECAY, LABEL_SMOOTHING = 0.1, 0.9, 5e-4, 0.1
YNN = "--xla_cpu_experimental_ynn_fusion_type"
# name -> XLA_FLAGS of the JAX process ("" = XLA's own defaults; the variable is unset).
FLAG_SETS = {
    "xla_default": "",
    "ynn_no_conv": f"{YNN}=-individual_convolution",
    "mlsd_cpu": " ".join(f"--{k}={v}" for k, v in CPU_XLA_FLAGS.items()),
    "onednn": f"{YNN}=-individual_convolution --xla_cpu_use_onednn=true",
    "ynn_no_conv_eigen_1t": f"{YNN}=-individual_convolution --xla_cpu_multi_thread_eigen=false",
}
FLAG_NOTES = {
    "xla_default": "no XLA_FLAGS: XLA:CPU's defaults (convolutions run by YNNPACK)",
    "ynn_no_conv": "convolutions taken out of YNNPACK (XLA's Eigen convolutions)",
    "mlsd_cpu": "mlsd_jax.utils.xla_flags.CPU_XLA_FLAGS (what configure_jax() sets): also "
                "reductions left to XLA's emitter",
    "onednn": "convolutions out of YNNPACK and xla_cpu_use_onednn requested (the optimised HLO "
              "is the same as without it; whether this jaxlib build runs oneDNN thunks shows "
              "only in the timing)",
    "ynn_no_conv_eigen_1t": "convolutions out of YNNPACK, Eigen single-threaded (a control)",
}
QUICK_FLAG_SETS = ("xla_default", "ynn_no_conv")


def run_settings(args) -> dict:
    if args.quick:
        s = dict(repeats=1, train_target_s=0.3, warmup_steps=1, infer_calls=10)
    else:
        s = dict(repeats=3, train_target_s=3.0, warmup_steps=3, infer_calls=200)
    if args.repeats:
        s["repeats"] = args.repeats
    if args.infer_calls:
        s["infer_calls"] = args.infer_calls
    s.update(max_steps=500, steps=args.steps, pool=args.pool, infer_sizes=(1,),
             width_multiplier=0.25 if args.quick else 1.0)
    return s


# --------------------------------------------------------------------------------------- data


def make_data(args, cfg: dict) -> dict:
    """Real Fashion-MNIST: ``train`` (``pool`` batches of ``x`` float32 ``[B, 28, 28, 1]``,
    ``y`` int32 ``[B]``), ``infer`` (``{1: x}``), the normalisation and the source."""
    from mlsd_jax.data.vision import load_fashion_mnist

    s = load_fashion_mnist()
    n = args.batch * cfg["pool"]
    if n > len(s.train_y):
        raise ValueError(f"--batch x --pool = {n} exceeds the {len(s.train_y)} training images")
    scaled = s.train_x.astype(np.float32) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std())

    def norm(x):
        return ((x.astype(np.float32) / 255.0 - mean) / std)[..., None]

    train = [{"x": norm(s.train_x[i:i + args.batch]), "y": s.train_y[i:i + args.batch]}
             for i in range(0, n, args.batch)]
    return {"train": train, "infer": {1: {"x": norm(s.valid_x[:1])}},
            "mean": mean, "std": std, "info": s.info}


# ---------------------------------------------------------------------------------------- JAX


class JaxVisionArm:
    """A ResNet's jitted SGD training step (state donated) and jitted inference, in a JAX
    process; the arm interface of ``_harness.serve_torch``."""

    optimizer_kind = "optax.add_decayed_weights (kernels) + optax.sgd(momentum=0.9)"

    def __init__(self, name: str, width: float, data: dict):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        import optax

        from mlsd_jax.models.vision import resnet

        model = resnet(name, NUM_CLASSES, stem="small", width_multiplier=width)
        variables = nn.meta.unbox(model.init(jax.random.key(0), data["train"][0]["x"][:1]))
        params, stats = variables["params"], variables["batch_stats"]
        self.params = int(sum(x.size for x in jax.tree.leaves(params)))
        decay = jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
        tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY, mask=decay),
                         optax.sgd(LR, momentum=MOMENTUM))

        def step(state, x, y):
            params, stats, opt = state

            def loss_fn(p):
                logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                          mutable=["batch_stats"])
                target = optax.smooth_labels(jax.nn.one_hot(y, NUM_CLASSES), LABEL_SMOOTHING)
                return optax.softmax_cross_entropy(logits, target).mean(), upd["batch_stats"]

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), new_stats, opt), loss

        self.step = jax.jit(step, donate_argnums=0)
        self.predict = jax.jit(lambda v, x: model.apply(v, x, train=False))
        self.state = (params, stats, tx.init(params))
        self.staged = [(jnp.asarray(b["x"]), jnp.asarray(b["y"])) for b in data["train"]]
        self.infer_inputs = {k: jnp.asarray(v["x"]) for k, v in data["infer"].items()}
        self.i, self.loss = 0, None

    def train(self, n: int) -> float:
        import jax

        t = time.perf_counter()
        st, loss = self.state, None
        for _ in range(n):
            st, loss = self.step(st, *self.staged[self.i % len(self.staged)])
            self.i += 1
        self.state = st
        jax.block_until_ready((st, loss))
        self.loss = loss
        return time.perf_counter() - t

    def infer(self, size: int, calls: int) -> list[float]:
        import jax

        variables = {"params": self.state[0], "batch_stats": self.state[1]}
        x, lat = self.infer_inputs[size], []
        for _ in range(calls):
            t = time.perf_counter()
            jax.block_until_ready(self.predict(variables, x))
            lat.append(time.perf_counter() - t)
        return lat


def jax_worker(args) -> None:
    """Child process: JAX under the ``XLA_FLAGS`` its parent set."""
    out, sys.stdout = sys.stdout, sys.stderr
    import jax

    cfg = run_settings(args)
    data = make_data(args, cfg)
    hello = {"device": cpu_model(), "device_type": jax.default_backend(),
             "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "threads": os.cpu_count(), "data_mean": data["mean"], "data_std": data["std"],
             "data_source": data["info"]["source"]}

    def setup(model: str, mode: str):
        arm = JaxVisionArm(model, cfg["width_multiplier"], data)
        return arm, arm.train(1)

    serve_torch(out, setup, hello, cfg)


# -------------------------------------------------------------------------------------- torch


def torch_resnet(name: str, width: float):
    """The torch peer of ``resnet(name, 10, stem="small", width_multiplier=width)``."""
    import math

    import torch
    from torch import nn

    from mlsd_jax.models.vision import RESNETS

    block, sizes, widths = RESNETS[name]
    if block != "basic":
        raise ValueError(f"{name}: the torch peer has basic blocks only")
    widths = tuple(max(1, int(round(w * width))) for w in widths)

    def conv_bn(cin, cout, k, stride, relu=True, zero=False):
        c = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)
        nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
        bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        if zero:
            nn.init.zeros_(bn.weight)
        return nn.Sequential(c, bn, *([nn.ReLU(inplace=True)] if relu else []))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = conv_bn(cin, cout, 3, stride)
            self.conv2 = conv_bn(cout, cout, 3, 1, relu=False, zero=True)
            self.proj = (conv_bn(cin, cout, 1, stride, relu=False)
                         if cin != cout or stride != 1 else None)

        def forward(self, x):
            y = self.conv2(self.conv1(x))
            return torch.relu((x if self.proj is None else self.proj(x)) + y)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_bn(1, widths[0], 3, 1)
            blocks, cin = [], widths[0]
            for s, (n, w) in enumerate(zip(sizes, widths)):
                for b in range(n):
                    blocks.append(Basic(cin, w, 2 if (s > 0 and b == 0) else 1))
                    cin = w
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(cin, NUM_CLASSES)
            # flax lecun_normal: truncated normal at +-2 std, variance 1 / fan_in
            std = math.sqrt(1.0 / cin) / 0.87962566103423978
            nn.init.trunc_normal_(self.head.weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(self.head.bias)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    return ResNet()


def torch_arm(name: str, mode: str, data: dict, cfg: dict, device) -> TorchArm:
    import torch
    import torch.nn.functional as F

    model = torch_resnet(name, cfg["width_multiplier"]).to(memory_format=torch.channels_last)
    def nchw(b):
        return {k: np.ascontiguousarray(v.transpose(0, 3, 1, 2)) if k == "x" else
                v.astype(np.int64) for k, v in b.items()}

    arm = TorchArm(model, [nchw(b) for b in data["train"]],
                   {k: nchw(v) for k, v in data["infer"].items()}, device)
    for b in [*arm.staged, *arm.infer_inputs.values()]:
        b["x"] = b["x"].contiguous(memory_format=torch.channels_last)
    decay = [p for p in arm.model.parameters() if p.ndim > 1]
    rest = [p for p in arm.model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY},
              {"params": rest, "weight_decay": 0.0}]
    kw = dict(lr=LR, momentum=MOMENTUM)
    if mode == "compile":
        opt, kind = torch.optim.SGD(groups, foreach=True, **kw), "SGD(foreach=True), compiled"
    else:
        try:
            opt, kind = torch.optim.SGD(groups, fused=True, **kw), "SGD(fused=True)"
        except (RuntimeError, ValueError, TypeError):
            opt, kind = torch.optim.SGD(groups, foreach=True, **kw), "SGD(foreach=True)"
    net = arm.model

    def step(batch):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(batch["x"]), batch["y"], label_smoothing=LABEL_SMOOTHING)
        loss.backward()
        opt.step()
        return loss.detach()

    def predict(x):
        return net(x["x"])

    if mode == "compile":
        step, predict = (torch.compile(step, **compile_kwargs(device)),
                         torch.compile(predict, **compile_kwargs(device)))
    arm.step, arm.predict_fn, arm.optimizer_kind = step, predict, kind
    return arm


def torch_worker(args) -> None:
    out, torch, device = torch_worker_start()
    cfg = run_settings(args)
    data = make_data(args, cfg)

    def setup(model: str, mode: str):
        arm = torch_arm(model, mode, data, cfg, device)
        return arm, arm.train(1)

    serve_torch(out, setup, torch_hello(torch, device), cfg)


# ------------------------------------------------------------------------------------ workers


class Worker(TorchPeer):
    """A child process (this script with ``--worker jax|torch``) with its own environment:
    ``env`` entries set, a ``None`` value removes the variable. Started without waiting:
    :meth:`hello` reads its first answer (so several workers start at once)."""

    def __init__(self, kind: str, worker_args: Sequence[str], tmp: Path, env: dict):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *worker_args]
        full = dict(os.environ, JAX_PLATFORMS="cpu", TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
                    TRITON_CACHE_DIR=str(tmp / "triton"))
        full.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        for k, v in env.items():
            full.pop(k, None) if v is None else full.__setitem__(k, v)
        self.log = tmp / f"{kind}_{len(list(tmp.glob('*.log')))}.log"
        self.proc = subprocess.Popen(cmd, env=full, cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"))
        self.info: dict = {}

    def hello(self) -> dict:
        self.info = self._read()
        return self.info


def worker_args(args) -> list[str]:
    out = ["--batch", str(args.batch), "--pool", str(args.pool)]
    return out + (["--quick"] if args.quick else [])


def time_all(arms: dict, cfg: dict, batch: int) -> tuple[dict, list]:
    """Interleaved rounds: training blocks of ``cfg["steps"]`` steps (or the steps that take
    about ``train_target_s``, probed per arm), then batch-1 inference blocks."""
    loads = []
    steps = {}
    for a, arm in arms.items():
        if cfg["steps"]:
            steps[a] = cfg["steps"]
        else:
            per = arm.train(2) / 2
            steps[a] = int(min(max(round(cfg["train_target_s"] / max(per, 1e-6)), 2),
                               cfg["max_steps"]))
    runs, lr = interleave({a: (lambda a=a: steps[a] / arms[a].train(steps[a])) for a in arms},
                          cfg["repeats"])
    loads += lr
    rows = {a: {"train": train_row(runs[a], None, steps[a], batch, "images")} for a in arms}
    calls = max(3, -(-cfg["infer_calls"] // cfg["repeats"]))
    lat, lr = interleave({a: (lambda a=a: arms[a].infer(1, calls)) for a in arms}, cfg["repeats"])
    loads += lr
    for a in arms:
        rows[a]["infer_1"] = infer_row(lat[a], 1, None, "images")
    return rows, loads


# --------------------------------------------------------------------------------------- main


def _mode(arm_name: str) -> str:
    return arm_name[len("torch_"):] if arm_name.startswith("torch_") else "jax"


def bench_model(name: str, cfg: dict, workers: dict, notes: list,
                concurrent_setup: bool = False) -> dict:
    """Sets up every arm (one after the other, so first-call times are not inflated by each
    other; all at once with ``concurrent_setup``), checks the parameter counts, times."""
    arms, first, meta = {}, {}, {}
    if concurrent_setup:
        for arm_name, w in workers.items():
            w.proc.stdin.write(json.dumps({"cmd": "setup", "model": name,
                                           "mode": _mode(arm_name)}) + "\n")
            w.proc.stdin.flush()
    for arm_name, w in workers.items():
        mode = _mode(arm_name)
        ans = w._read() if concurrent_setup else w.request(cmd="setup", model=name, mode=mode)
        if "error" in ans:
            notes.append(f"{arm_name} failed for {name}, its rows are skipped: {ans['error']}")
            print(f"{arm_name} {name}: {ans['error']}", flush=True)
            continue
        arms[arm_name] = RemoteArm(w, name, mode)
        meta[arm_name] = ans
        first[arm_name] = ans["first_call_s"]
        print(f"{arm_name} {name}: ready (first step {ans['first_call_s']:.1f} s)", flush=True)
    params = {a: m["params"] for a, m in meta.items()}
    if len(set(params.values())) > 1:
        raise AssertionError(f"{name}: parameter counts differ between arms: {params}")
    rows, loads = time_all(arms, cfg, cfg["batch"])
    for a in arms:
        rows[a]["train"]["first_call_s"] = first[a]
        rows[a]["infer_1"]["first_call_s"] = meta[a]["infer_first_call_s"]["1"]
        rows[a]["final_loss"] = arms[a].loss()
        rows[a]["optimizer"] = meta[a]["optimizer"]
    print(f"{name}: done", flush=True)
    return {"params": next(iter(params.values()), None), "rows": rows, "load_avg_1min": loads}


def build_rows(results: dict) -> list[dict]:
    out = []
    for name, m in results["models"].items():
        r = m["rows"]
        for meas, key in (("train", "steps_per_s"), ("infer_1", "images_per_s")):
            eager = r.get("torch_eager", {}).get(meas)
            comp = r.get("torch_compile", {}).get(meas)
            best = best_of([eager, comp], key)
            for a in (a for a in r if a.startswith("jax[")):
                out.append({"model": name, "measurement": meas, "arm": a, "jax": r[a][meas],
                            "vs_eager": ratios(r[a][meas], eager, key),
                            "vs_compile": ratios(r[a][meas], comp, key),
                            "vs_best_torch": ratios(r[a][meas], best, key)})
    return out


def best_flag_sets(results: dict) -> dict:
    """Per model, the JAX flag set with the highest median training images/s."""
    best = {}
    for name, m in results["models"].items():
        jax_rows = {a[4:-1]: r["train"]["images_per_s"] for a, r in m["rows"].items()
                    if a.startswith("jax[")}
        if jax_rows:
            top = max(jax_rows, key=jax_rows.get)
            best[name] = {"flag_set": top, "images_per_s": jax_rows[top],
                          "vs_xla_default": (jax_rows[top] / jax_rows["xla_default"]
                                             if "xla_default" in jax_rows else None)}
    return best


def _train_cell(r):
    if not r:
        return "—"
    per_step = r["images_per_s"] / r["steps_per_s"]
    return (f"{fmt(r['images_per_s'])} ({fmt(r['steps_per_s_min'] * per_step)}–"
            f"{fmt(r['steps_per_s_max'] * per_step)})")


def _infer_cell(r):
    return "—" if not r else f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f} ms"


def markdown(results: dict) -> str:
    s, t = results["settings"], results["torch"]
    lines = [
        "# ResNet throughput on Fashion-MNIST: JAX (XLA:CPU flag sets) vs PyTorch", "",
        f"- command: `{results['command']}`", f"- date: {results['date']}",
        device_line(results["device"], t), versions_line(results["versions"]),
        f"- precision: {results['precision']}", f"- data: {s['data']}",
        f"- models: {', '.join(results['models'])}, small stem, 28x28x1, 10 classes, width "
        f"multiplier {s['width_multiplier']}",
        f"- training: batch {s['batch']}, {s['pool']} staged batches cycled; softmax "
        f"cross-entropy (label smoothing {LABEL_SMOOTHING}), SGD lr {LR} momentum {MOMENTUM}, "
        f"weight decay {WEIGHT_DECAY} on kernels; JAX: one jitted step, state donated; "
        "torch.compile: the whole step including optimizer.step()",
        f"- timing: arms interleaved (each in its own process), {s['repeats']} rounds; training "
        + (f"blocks of {s['steps']} steps" if s["steps"] else
           f"blocks of ~{s['train_target_s']} s") + f", inference {s['infer_calls']} calls per "
        "arm at batch 1; median (min–max over rounds); ratio = JAX / torch medians (min–max of "
        "the per-round paired ratios), > 1: JAX faster",
        f"- load average (1, 5, 15 min) at the start: {results['load_avg_start']}",
        load_line(results), "", "JAX flag sets (`XLA_FLAGS` of each JAX process):", ""]
    lines += [f"- `{k}`: `{v or '(unset)'}` — {FLAG_NOTES[k]}"
              for k, v in FLAG_SETS.items() if k in s["flag_sets"]]
    lines += ["", "Training (images/s):", "",
              "| model | arm | images/s | torch eager | torch.compile | JAX / eager | "
              "JAX / compile | **JAX / faster torch** |", "|---|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        r = m["rows"]
        for row in (x for x in results["rows"]
                    if x["model"] == name and x["measurement"] == "train"):
            lines.append(f"| {name} | {row['arm']} | {_train_cell(row['jax'])} | "
                         f"{_train_cell(r.get('torch_eager', {}).get('train'))} | "
                         f"{_train_cell(r.get('torch_compile', {}).get('train'))} | "
                         f"{ratio_cell(row['vs_eager'])} | {ratio_cell(row['vs_compile'])} | "
                         f"{ratio_cell(row['vs_best_torch'])} |")
    lines += ["", "Inference latency at batch 1, p50 / p99 per call:", "",
              "| model | arm | JAX | torch eager | torch.compile | calls/s JAX / eager | "
              "JAX / compile |", "|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        r = m["rows"]
        for row in (x for x in results["rows"]
                    if x["model"] == name and x["measurement"] != "train"):
            lines.append(f"| {name} | {row['arm']} | {_infer_cell(row['jax'])} | "
                         f"{_infer_cell(r.get('torch_eager', {}).get('infer_1'))} | "
                         f"{_infer_cell(r.get('torch_compile', {}).get('infer_1'))} | "
                         f"{ratio_cell(row['vs_eager'])} | {ratio_cell(row['vs_compile'])} |")
    lines += ["", "| model | params (all arms) | arm | first train step (compile), s | final "
              "loss | optimizer |", "|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        for a, r in m["rows"].items():
            lines.append(f"| {name} | {m['params']:,} | {a} | {r['train']['first_call_s']:.1f} | "
                         f"{r['final_loss']:.3f} | {r['optimizer']} |")
    best = results["best_flag_set"]
    if best:
        lines += ["", "Best JAX flag set (training images/s): " + "; ".join(
            f"{n}: `{b['flag_set']}` ({fmt(b['images_per_s'])} images/s"
            + (f", {b['vs_xla_default']:.2f}× XLA's defaults)" if b["vs_xla_default"] else ")")
            for n, b in best.items())]
    if results["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--models", nargs="+", default=None, choices=MODELS,
                   help="default: both (resnet20 only with --quick)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 128; "
                   "32 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per timed block (default: about 3 s of steps per arm)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of interleaved blocks")
    p.add_argument("--infer-calls", type=int, default=None,
                   help="batch-1 inference calls per arm over all rounds (default 200)")
    p.add_argument("--pool", type=int, default=4, help="distinct training batches cycled through")
    p.add_argument("--flag-sets", nargs="+", choices=list(FLAG_SETS), default=None,
                   help="JAX XLA_FLAGS sets, one process each (default: all; "
                   f"{' and '.join(QUICK_FLAG_SETS)} with --quick)")
    p.add_argument("--torch-modes", nargs="+", choices=TORCH_MODES, default=None,
                   help="torch arms (default: both; eager only with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: resnet20 at width 0.25, batch 32, 1 short round, two flag "
                   "sets, no torch.compile, the arms set up concurrently")
    p.add_argument("--no-torch", action="store_true", help="JAX rows only")
    p.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.batch = args.batch or (32 if args.quick else 128)
    if args.batch < 1 or args.pool < 1 or (args.steps is not None and args.steps < 1):
        p.error("expected --batch >= 1, --pool >= 1 and --steps >= 1")

    if args.worker == "jax":
        jax_worker(args)
        return 0
    if args.worker == "torch":
        torch_worker(args)
        return 0

    import importlib.util

    t_start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    models = args.models or (["resnet20"] if args.quick else list(MODELS))
    flag_sets = args.flag_sets or list(QUICK_FLAG_SETS if args.quick else FLAG_SETS)
    modes = args.torch_modes or (["eager"] if args.quick else list(TORCH_MODES))
    cfg = {**run_settings(args), "batch": args.batch}
    busy_start = busy_cores()
    tmp = Path(tempfile.mkdtemp(prefix="vision_throughput_"))
    wargs = worker_args(args)
    notes: list[str] = []
    skipped = ("--no-torch" if args.no_torch else None if importlib.util.find_spec("torch")
               else "PyTorch is not installed (pip install torch); torch rows skipped")
    workers: dict = {}
    torch_res: dict = {"skipped": skipped} if skipped else {}
    tw = None
    try:
        for fs in flag_sets:
            workers[f"jax[{fs}]"] = Worker("jax", wargs, tmp, {"XLA_FLAGS": FLAG_SETS[fs] or None})
        if not skipped:
            try:
                tw = Worker("torch", wargs, tmp, {})
            except OSError as e:
                skipped = f"torch worker failed: {e}"
        for w in workers.values():
            w.hello()
        if tw is not None:
            try:
                torch_res = dict(tw.hello())
                for m in modes:
                    workers[f"torch_{m}"] = tw
            except (RuntimeError, json.JSONDecodeError) as e:
                tw.close()
                skipped = f"torch worker failed: {e}"
        if skipped:
            torch_res = {"skipped": skipped}
        jax_info = {a: w.info for a, w in workers.items() if a.startswith("jax[")}
        res_models = {name: bench_model(name, cfg, workers, notes, concurrent_setup=args.quick)
                      for name in models}
    finally:
        for w in {id(w): w for w in [*workers.values(), *([tw] if tw else [])]}.values():
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)

    import jax

    plat = jax.default_backend()
    busy = (busy_start, busy_cores())
    notes += host_notes(plat, busy, torch_res, skipped, modes)
    for a, info in jax_info.items():
        if info.get("xla_flags", "") != FLAG_SETS[a[4:-1]]:
            notes.append(f"{a}: the process saw XLA_FLAGS={info.get('xla_flags')!r}")
    data = next(iter(jax_info.values()))
    data_text = (f"real Fashion-MNIST ({data['data_source']}), the first "
                 f"{args.batch * args.pool:,} training images in {args.pool} batches of "
                 f"{args.batch}, uint8 -> /255, standardised (mean {data['data_mean']:.4f}, std "
                 f"{data['data_std']:.4f}); inference: one validation image")
    results = {
        "benchmark": "vision_throughput",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "python benchmarks/vision_throughput.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "device": device_info(jax.devices()[0], plat, torch_res, busy),
        "versions": versions(torch_res),
        "precision": precision(plat, torch_res),
        "load_avg_start": load_start,
        "settings": {**cfg, "torch_modes": modes, "flag_sets": flag_sets, "quick": args.quick,
                     "xla_flag_sets": {k: FLAG_SETS[k] for k in flag_sets}, "data": data_text,
                     "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
                     "label_smoothing": LABEL_SMOOTHING},
        "load_avg_1min": [x for m in res_models.values() for x in m["load_avg_1min"]],
        "jax_processes": jax_info, "torch": torch_res, "models": res_models, "notes": notes,
    }
    results["rows"] = build_rows(results)
    results["best_flag_set"] = best_flag_sets(results)
    results["wall_s"] = time.perf_counter() - t_start
    write_results(args.out_dir, "vision_throughput", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
