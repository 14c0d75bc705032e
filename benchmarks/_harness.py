"""Shared machinery of the speed benchmarks that race our JAX models against PyTorch.

``ranking_throughput.py`` and ``recsys_throughput.py`` are built on it; each keeps only its
models, data and report. What lives here:

* **timing**: blocks of back-to-back training steps or synchronised inference calls sized to a
  time budget, and :func:`time_arms`, which runs every arm (one framework in one mode) in
  rotating turns for several rounds, so slow phases of a shared machine hit every arm alike;
* **statistics**: medians with their min-max spread over rounds, and ratios of medians with the
  spread of the per-round (paired) ratios;
* **the arms**: :class:`JaxArm` runs a task through the core (``Trainer.train_step`` with
  donated state, the jitted ``predict_fn`` of its serving signature); :class:`TorchArm` runs a
  torch model's training step (AdamW, optionally the whole step compiled) and predict function;
* **the torch peer**: PyTorch runs in a child process (the benchmark script itself, started with
  ``--torch-worker``) that keeps its arms alive and answers one JSON command per line over a
  pipe (:class:`TorchPeer` in the parent, :func:`serve_torch` in the child). The frameworks
  never share threads, GPU memory or CUDA libraries, yet their blocks interleave. On CPU the
  child's OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set): spinning
  OpenMP threads collapse when other processes hold cores (10x slower steps were seen on a
  shared 2-core host);
* **torch helpers** shared by the peers: AdamW at its fastest for an arm, the warmup + cosine
  schedule of :func:`mlsd_jax.training.optim.make_schedule`, ``torch.compile`` settings;
* **report**: model config files, host and device facts (CPU model, other work on the host,
  device tag for the results file name), library versions, number formatting, markdown lines
  and cells, the results files.

Nothing here imports torch, hydra or tensorflow at module level: a machine without torch runs
the JAX rows and records why the torch rows are missing.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


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


def time_arms(arms: Mapping, cfg: dict, *, first_train: Mapping[str, float],
              first_infer: Mapping[str, Mapping[int, float]], items_per_step: int,
              item: str, unit: str) -> tuple[dict, list]:
    """Interleaved timing of ``arms`` (``{name: arm}``; an arm has ``train(n) -> seconds`` and
    ``infer(size, calls) -> [seconds per call]``), already set up and warm.

    Training first (blocks of about ``train_target_s``, the step count fixed per arm from a
    probe), then inference at each of ``cfg["infer_sizes"]``. Returns ``({arm: {"train": row,
    "infer_<size>": row}}, load averages)``; rows as :func:`train_row` / :func:`infer_row`
    (``item`` names what a training step processes ``items_per_step`` of, ``unit`` what an
    inference batch holds ``size`` of).
    """
    loads = []
    steps = {a: steps_per_block(arm.train, cfg) for a, arm in arms.items()}
    runs, lr = interleave({a: (lambda a=a: steps[a] / arms[a].train(steps[a])) for a in arms},
                          cfg["repeats"])
    loads += lr
    rows = {a: {"train": train_row(runs[a], first_train[a], steps[a], items_per_step, item)}
            for a in arms}
    for size in cfg["infer_sizes"]:
        calls = {a: calls_per_block(float(np.median(arm.infer(size, 3))), cfg)
                 for a, arm in arms.items()}
        lat, lr = interleave({a: (lambda a=a: arms[a].infer(size, calls[a])) for a in arms},
                             cfg["repeats"])
        loads += lr
        for a in arms:
            rows[a][f"infer_{size}"] = infer_row(lat[a], size, first_infer[a][size], unit)
    return rows, loads


# --------------------------------------------------------------------------------- statistics


def spread(values) -> dict:
    v = [float(x) for x in values]
    return {"median": float(np.median(v)), "min": min(v), "max": max(v), "repeats": v}


def train_row(rates: list, first_call_s: float, steps: int, items_per_step: int,
              item: str) -> dict:
    """Steps/s over rounds (median, min, max, all) and ``<item>_per_s`` at the median."""
    s = spread(rates)
    return {"steps_per_s": s["median"], "steps_per_s_min": s["min"], "steps_per_s_max": s["max"],
            "repeats_steps_per_s": s["repeats"], f"{item}_per_s": s["median"] * items_per_step,
            "steps_per_repeat": steps, "first_call_s": first_call_s}


def infer_row(blocks: list, size: int, first_call_s: float, unit: str) -> dict:
    """``blocks``: per round, the list of per-call latencies in seconds. Latency percentiles
    over all calls; ``<unit>_per_s`` (``size`` per call) per round, median and spread."""
    lat = np.concatenate([np.asarray(b, float) for b in blocks])
    s = spread([size * len(b) / max(sum(b), 1e-12) for b in blocks])
    return {"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "mean_ms": float(lat.mean() * 1e3), "calls": int(lat.size),
            f"{unit}_per_s": s["median"], f"{unit}_per_s_min": s["min"],
            f"{unit}_per_s_max": s["max"], f"repeats_{unit}_per_s": s["repeats"],
            "first_call_s": first_call_s}


def ratios(jax_row: dict, torch_row: dict | None, key: str) -> dict | None:
    """Median JAX / median torch, and the spread of the per-round (paired) ratios."""
    if not jax_row or not torch_row:
        return None
    paired = [a / b for a, b in zip(jax_row[f"repeats_{key}"], torch_row[f"repeats_{key}"])]
    return {"median_ratio": jax_row[key] / torch_row[key], "paired_min": min(paired),
            "paired_median": float(np.median(paired)), "paired_max": max(paired)}


def best_of(rows: Sequence[dict | None], key: str) -> dict | None:
    """The faster of several rows per round (``repeats_<key>`` is the per-round maximum,
    ``<key>`` its median): the peer a ratio against "the faster variant" is paired with."""
    rows = [r for r in rows if r]
    if not rows:
        return None
    per_round = [max(v) for v in zip(*(r[f"repeats_{key}"] for r in rows))]
    return {key: float(np.median(per_round)), f"repeats_{key}": per_round}


# ------------------------------------------------------------------------------------- config


def read_model_file(path: Path) -> dict:
    """A model config file (``configs/<task>/model/<name>.yaml``) as keyword arguments of the
    model: the ``model:`` node of a ``@package _global_`` file or the whole file, without
    ``_target_``; lists become tuples. Read with PyYAML, without hydra."""
    import yaml

    node = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(node.get("model"), dict):
        node = node["model"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in node.items() if k != "_target_"}


# ------------------------------------------------------------------------------------ the arms


class JaxArm:
    """One JAX model through the core: ``Trainer.train_step`` (jitted, state donated) on staged
    training batches and the jitted ``predict_fn`` of the task's ``serving_default`` signature
    on staged inference inputs (``{size: inputs}``), on one device."""

    def __init__(self, task, optim, batch_size: int, train_batches: Sequence[dict],
                 infer_inputs: Mapping[int, dict], schedule_steps: int):
        import jax

        from mlsd_jax.sharding import MeshConfig, make_mesh
        from mlsd_jax.tasks.base import predict_fn
        from mlsd_jax.training.trainer import Trainer, TrainerConfig

        self.task = task
        mesh = make_mesh(MeshConfig(num_devices=1))
        self.trainer = Trainer(task, TrainerConfig(
            max_steps=schedule_steps, batch_size=batch_size, eval_every=0, patience=0,
            progress=False), optim, mesh)
        self.state = self.trainer.init_state()
        self.params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
        self.staged = [self.trainer.put_batch(b) for b in train_batches]
        self.rng = jax.device_put(jax.random.key(0), jax.sharding.NamedSharding(
            mesh, jax.sharding.PartitionSpec()))
        self.i, self.metrics = 0, None
        self.predict = jax.jit(predict_fn(task.model, task.signatures["serving_default"]))
        self.infer_inputs = {b: {k: jax.device_put(v) for k, v in x.items()}
                             for b, x in infer_inputs.items()}

    def train(self, n: int) -> float:
        """Seconds for ``n`` steps dispatched back to back, synchronised at the end."""
        import jax

        t = time.perf_counter()
        st = self.state
        for _ in range(n):
            st, self.metrics = self.trainer.train_step(st, self.staged[self.i % len(self.staged)],
                                                       self.rng)
            self.i += 1
        self.state = st
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - t

    def infer(self, size: int, calls: int) -> list[float]:
        """Latency of each of ``calls`` predictions of ``size`` rows, each synchronised."""
        import jax

        variables = {"params": self.state.params, **self.state.model_state}
        x, consts = self.infer_inputs[size], self.state.consts
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            jax.block_until_ready(self.predict(variables, consts, x))
            lat.append(time.perf_counter() - t)
        return lat

    def warm_up(self, cfg: dict) -> tuple[float, dict[int, float]]:
        """First training step (compilation included), warmup steps, first inference calls:
        ``(first_train_s, {size: first_infer_s})``."""
        first = self.train(1)
        self.train(cfg["warmup_steps"])
        infer_first = {}
        for b in cfg["infer_sizes"]:
            infer_first[b] = self.infer(b, 1)[0]
            self.infer(b, 2)
        return first, infer_first

    def final_loss(self) -> float:
        return float(self.metrics["train/loss"])


class TorchArm:
    """One torch model in one arm, in the worker: a training ``step(batch) -> loss`` cycled
    over staged batches and a ``predict(inputs)`` under ``torch.inference_mode``.

    :meth:`use_adamw` installs the standard step (forward, loss, backward, global-norm clipping,
    AdamW, warmup + cosine schedule), compiled whole in the ``compile`` mode; an arm with
    another optimizer sets ``step``, ``predict_fn``, ``after_step`` and ``optimizer_kind`` itself.
    """

    def __init__(self, model, train_batches: Sequence[dict], infer_inputs: Mapping[int, dict],
                 device):
        import torch

        self.model = model.to(device)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.device = device
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        dev = lambda b: {k: torch.from_numpy(np.asarray(v)).to(device)  # noqa: E731
                         for k, v in b.items()}
        self.staged = [dev(b) for b in train_batches]
        self.infer_inputs = {b: dev(x) for b, x in infer_inputs.items()}
        self.step = self.predict_fn = None
        self.after_step: Callable[[], None] = lambda: None
        self.optimizer_kind = ""
        self.i, self.loss = 0, None

    def use_adamw(self, loss: Callable, predict: Callable, mode: str, ocfg, schedule_steps: int,
                  params=None, single_tensor: bool = False) -> "TorchArm":
        """``loss(batch) -> scalar``, ``predict(inputs) -> outputs``; ``params``: tensors or
        param groups (default: all parameters, one group)."""
        import torch

        model, clip = self.model, ocfg.clip_norm
        opt, self.optimizer_kind = torch_adamw(
            model.parameters() if params is None else params, mode, self.device, ocfg,
            single_tensor)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, ocfg, schedule_steps) / ocfg.lr)

        def step(batch):
            opt.zero_grad(set_to_none=True)
            value = loss(batch)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            return value.detach()

        if mode == "compile":
            # The whole step: forward, loss, backward, clipping and AdamW (dynamo compiles the
            # optimizer step as its own graph); CUDA graphs on GPU.
            kw = compile_kwargs(self.device)
            step, predict = torch.compile(step, **kw), torch.compile(predict, **kw)
        self.step, self.predict_fn, self.after_step = step, predict, sched.step
        return self

    def train(self, n: int) -> float:
        self.model.train()
        t = time.perf_counter()
        for _ in range(n):
            batch = self.staged[self.i % len(self.staged)]
            self.i += 1
            self.loss = self.step(batch)
            self.after_step()
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
                self.predict_fn(x)
            self.sync()
            lat.append(time.perf_counter() - t)
        return lat


# ---------------------------------------------------------------------------- the torch peer


class RemoteArm:
    """One torch arm living in the worker, with the arm interface of :func:`time_arms`."""

    def __init__(self, peer: "TorchPeer", model: str, mode: str):
        self.peer, self.model, self.mode = peer, model, mode

    def train(self, n: int) -> float:
        return self.peer.request(cmd="train", model=self.model, mode=self.mode, n=n)["seconds"]

    def infer(self, size: int, calls: int) -> list[float]:
        return self.peer.request(cmd="infer", model=self.model, mode=self.mode, size=size,
                                 calls=calls)["latencies"]

    def loss(self) -> float:
        return self.peer.request(cmd="loss", model=self.model, mode=self.mode)["loss"]


class TorchPeer:
    """The parent's handle on the torch worker: ``script --torch-worker *worker_args``."""

    def __init__(self, script: Path, worker_args: Sequence[str], tmp: Path):
        cmd = [sys.executable, str(Path(script).resolve()), "--torch-worker", *worker_args]
        # The child uses JAX only for checks against mlsd_jax; fresh compiler caches make the
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

    def setup(self, model: str, modes: Sequence[str], notes: list) -> dict:
        """Sets up (compiles) the arms of one model; returns ``{mode: setup answer}``. A failed
        arm is recorded in ``notes`` and left out; the others still run."""
        arms = {}
        for mode in modes:
            ans = self.request(cmd="setup", model=model, mode=mode)
            if "error" in ans:
                notes.append(f"torch {mode} failed for {model}, its rows are skipped: {ans['error']}")
                print(f"torch {mode} {model}: {ans['error']}", flush=True)
                continue
            arms[mode] = ans
            print(f"torch {mode} {model}: ready (first step {ans['first_call_s']:.1f} s)", flush=True)
        return arms

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def start_torch(no_torch: bool, script: Path, worker_args: Sequence[str], tmp: Path):
    """``(peer, None)`` or ``(None, reason)`` when torch is absent or does not start."""
    if no_torch:
        return None, "--no-torch"
    if importlib.util.find_spec("torch") is None:
        return None, "PyTorch is not installed (pip install torch); torch rows skipped"
    try:
        return TorchPeer(script, worker_args, tmp), None
    except (RuntimeError, OSError, json.JSONDecodeError) as e:
        return None, f"torch worker failed: {e}"


def torch_worker_start():
    """In the worker, before anything prints: keeps stdout for the answers (library output goes
    to stderr), imports torch and sets it up as the benchmarks compare it: inductor's
    ``fallback_random`` (the same RNG calls as eager), TF32 on CUDA (as JAX's default matmul
    precision allows), all host cores on CPU. Returns ``(answer_stream, torch, device)``."""
    out, sys.stdout = sys.stdout, sys.stderr
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(os.cpu_count())
    return out, torch, torch.device("cuda" if on_gpu else "cpu")


def torch_hello(torch, device) -> dict:
    """What the worker reports about itself in its first answer."""
    on_gpu = device.type == "cuda"
    return {"device": torch.cuda.get_device_name(0) if on_gpu else cpu_model(),
            "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "tf32": bool(on_gpu and torch.backends.cuda.matmul.allow_tf32)}


def serve_torch(out, setup: Callable, hello: dict, cfg: dict,
                commands: Mapping[str, Callable[[dict], dict]] | None = None) -> None:
    """The worker's loop: one JSON command per line on stdin, one JSON answer per line on
    ``out``.

    ``setup(model, mode) -> (arm, first_call_s)`` builds an arm and runs its first training
    step; an arm has ``train(n) -> seconds``, ``infer(size, calls) -> [seconds]``, ``params``,
    ``optimizer_kind`` and ``loss`` (the last step's loss). Commands: ``setup`` (then
    ``cfg["warmup_steps"]`` steps and the first inference calls at ``cfg["infer_sizes"]``),
    ``train``, ``infer``, ``loss``, ``quit``, and the script's own ``commands`` (``{name:
    fn(message) -> answer}``). Errors are answered, never raised.
    """
    arms: dict = {}

    def reply(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply(hello)
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        key = (msg.get("model"), msg.get("mode"))
        try:
            if cmd == "setup":
                arm, first = setup(*key)
                arms[key] = arm
                arm.train(cfg["warmup_steps"])
                infer_first = {}
                for b in cfg["infer_sizes"]:
                    infer_first[b] = arm.infer(b, 1)[0]
                    arm.infer(b, 2)
                reply({"params": arm.params, "first_call_s": first, "optimizer": arm.optimizer_kind,
                       "infer_first_call_s": infer_first, **getattr(arm, "info", {})})
            elif cmd == "train":
                reply({"seconds": arms[key].train(msg["n"])})
            elif cmd == "infer":
                reply({"latencies": arms[key].infer(msg["size"], msg["calls"])})
            elif cmd == "loss":
                reply({"loss": float(arms[key].loss)})
            elif commands and cmd in commands:
                reply(commands[cmd](msg))
            else:
                reply({"error": f"unknown command {cmd!r}"})
        except Exception as e:  # noqa: BLE001 -- reported to the parent, which records it
            arms.pop(key, None) if cmd == "setup" else None
            reply({"error": f"{type(e).__name__}: {str(e).strip()[:400]}"})


# ----------------------------------------------------------------------------- torch helpers


def torch_adamw(params, mode: str, device, ocfg, single_tensor: bool = False):
    """AdamW at its fastest for an arm: ``(optimizer, description)``.

    ``params``: tensors or param groups (a group's own ``weight_decay`` wins). ``compile`` on
    CPU: the multi-tensor AdamW compiled inside the step, with a tensor learning rate so the
    schedule does not recompile it (``capturable``: only the compiled path allows it on CPU);
    ``single_tensor=True`` is the fallback where that fails. Otherwise the fused kernel (CUDA,
    and CPU since torch 2.4), with a tensor learning rate when compiled.
    """
    import torch

    kw = dict(betas=(ocfg.b1, ocfg.b2), weight_decay=ocfg.weight_decay, eps=1e-8)
    params = list(params)
    on_gpu = device.type == "cuda"
    if mode == "compile" and not on_gpu and single_tensor:
        return (torch.optim.AdamW(params, lr=torch.tensor(ocfg.lr), foreach=False, **kw),
                "AdamW(foreach=False, tensor lr), compiled")
    if mode == "compile" and not on_gpu:
        return (torch.optim.AdamW(params, lr=torch.tensor(ocfg.lr), foreach=True, capturable=True,
                                  **kw),
                "AdamW(foreach=True, capturable=True, tensor lr), compiled")
    lr = torch.tensor(ocfg.lr, device=device) if mode == "compile" else ocfg.lr
    try:
        return (torch.optim.AdamW(params, lr=lr, fused=True, **kw),
                "AdamW(fused=True" + (", tensor lr), inside the compiled step"
                                      if mode == "compile" else ")"))
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=ocfg.lr, **kw), "AdamW (default implementation)"


def warmup_cosine(step: int, ocfg, total_steps: int, lr: float | None = None) -> float:
    """``optax.warmup_cosine_decay_schedule(0, lr, warmup, total_steps, lr * end_factor)``, as
    :func:`mlsd_jax.training.optim.make_schedule` builds it (``lr`` defaults to ``ocfg.lr``)."""
    peak = ocfg.lr if lr is None else lr
    warm = min(ocfg.warmup_steps, total_steps - 1)
    if step < warm:
        return peak * step / warm
    t = min(step - warm, total_steps - warm) / (total_steps - warm)
    end = peak * ocfg.end_lr_factor
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


def compile_kwargs(device) -> dict:
    """``torch.compile`` options of the compiled arms: static shapes, CUDA graphs on GPU."""
    return dict(dynamic=False, mode="reduce-overhead" if device.type == "cuda" else None)


# ------------------------------------------------------------------------------ host, report


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
    """``cpu``, ``h100``, ``a100``...: the suffix of a results file."""
    if platform_name == "cpu":
        return "cpu"
    m = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", kind.lower().replace("nvidia", ""))
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or platform_name


def device_info(dev, plat: str, torch_res: dict, busy: Sequence) -> dict:
    """The ``device`` block of a results file."""
    return {"tag": device_tag(dev.device_kind, plat), "jax": dev.device_kind,
            "jax_platform": plat, "torch": torch_res.get("device"),
            "torch_device_type": torch_res.get("device_type"),
            "host_cpus": os.cpu_count(), "torch_threads": torch_res.get("threads"),
            "other_busy_cores_before_after": list(busy),
            "host_cpu": cpu_model(), "machine": platform.platform()}


def versions(torch_res: dict) -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__,
            "torch": torch_res.get("torch")}


def precision(plat: str, torch_res: dict) -> str:
    if plat == "cpu":
        return "float32 (CPU, no TF32) in both"
    return ("float32; JAX default matmul precision (XLA may use TF32 on GPU); torch "
            f"allow_tf32={torch_res.get('tf32')}")


def host_notes(plat: str, busy: Sequence, torch_res: dict, skipped: str | None,
               modes: Sequence[str]) -> list[str]:
    """Notes every results file carries: other work on the host, missing torch arms, devices
    that differ."""
    notes = []
    busy = [b for b in busy if b is not None]
    if plat == "cpu" and busy and max(busy) > 0.25:
        notes.append(f"other work kept {max(busy):.1f} of {os.cpu_count()} cores busy before or "
                     "after the run: CPU figures are disturbed (the interleaving spreads the "
                     "disturbance over all arms)")
    if skipped:
        notes.append(f"torch rows skipped: {skipped}")
    elif "compile" not in modes:
        notes.append("torch.compile arm not run (--quick or --torch-modes)")
    expected = "cpu" if plat == "cpu" else "cuda"
    if torch_res.get("device_type") and torch_res["device_type"] != expected:
        notes.append(f"JAX runs on {plat} but torch on {torch_res['device_type']}: ratios compare "
                     "different devices")
    return notes


def device_line(d: dict, t: dict) -> str:
    return (f"- device: JAX `{d['jax']}` ({d['jax_platform']}); torch `{d.get('torch') or '—'}` "
            f"({d.get('torch_device_type') or '—'}, {d.get('torch_threads') or '—'} threads, "
            f"OMP_WAIT_POLICY={t.get('omp_wait_policy') or 'unset'}); host {d['host_cpus']} CPU "
            f"cores ({d['host_cpu']})")


def versions_line(v: dict) -> str:
    return (f"- versions: python {v['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, "
            f"optax {v['optax']}, numpy {v['numpy']}, torch {v.get('torch') or '—'}")


def load_line(results: dict) -> str:
    d = results["device"]
    loads = [x for x in results["load_avg_1min"] if x is not None]
    return ("- load average (1 min) over the rounds: "
            + (f"{min(loads):.2f}–{max(loads):.2f} on {d['host_cpus']} cores" if loads else "n/a")
            + f"; other work before/after: {d['other_busy_cores_before_after']} cores")


def fmt(x, digits=3):
    """A rate or latency for a table: 3 significant digits, thousands separators, k/M."""
    if x is None:
        return "—"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e5:
        return f"{x / 1e3:,.0f}k"
    return f"{x:.{digits}g}" if x < 100 else f"{x:,.0f}"


def ratio_cell(x: dict | None) -> str:
    if x is None:
        return "—"
    return f"**{x['median_ratio']:.2f}×** ({x['paired_min']:.2f}–{x['paired_max']:.2f})"


def write_results(out_dir: str | Path, name: str, results: dict, md: str) -> Path:
    """``<out_dir>/<name>_<device tag>.{json,md}``; prints the table. Returns the stem."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}_{results['device']['tag']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md in {results['wall_s']:.0f} s")
    return stem
