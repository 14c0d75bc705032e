"""One trainer for every task: sharded jitted steps, evaluation, checkpoints, early stopping.

Sections: state setup (eval_shape -> logical shardings -> jit init), step functions (pure),
the loop (side effects: logging, checkpoints, early stopping), and final evaluation of the best
state over whole splits with streaming metric accumulators.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path
from typing import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from mlsd_jax import sharding as shd
from mlsd_jax.tasks.base import Task
from mlsd_jax.training.checkpoint import Checkpoints, abstract_with_shardings
from mlsd_jax.training.optim import OptimConfig, make_optimizer
from mlsd_jax.training.state import TrainState


@dataclasses.dataclass
class TrainerConfig:
    max_steps: int = 600
    batch_size: int = 8                # global, in examples (lists for ranking)
    eval_batch_size: int = 16
    eval_every: int = 50
    log_every: int = 10
    patience: int = 6                  # evaluations without improvement before stopping; 0 = off
    keep_checkpoints: int = 2
    checkpoint_every: int | None = None  # default: at every evaluation
    # Steps dispatched ahead of the host. None: 1 on multi-device CPU meshes (XLA's CPU
    # collectives can deadlock with many steps in flight), 8 elsewhere.
    max_steps_in_flight: int | None = None
    seed: int = 0
    eval_split: str = "valid"          # early stopping / best checkpoint split
    final_splits: tuple[str, ...] = ("valid", "test")
    progress: bool = True


SPLIT_PREFIX = {"test": "eval", "valid": "valid", "train": "train"}


def metric_key(split: str, name: str) -> str:
    return f"{SPLIT_PREFIX.get(split, split)}/{name}"


@dataclasses.dataclass
class FitResult:
    state: TrainState
    metrics: dict[str, float]
    best_step: int | None
    best_metric: float | None
    steps_run: int
    stopped_early: bool
    timings: dict[str, float]
    checkpoint_dir: str
    best_checkpoint: str | None


class Trainer:
    def __init__(self, task: Task, cfg: TrainerConfig, optim: OptimConfig, mesh, rules=None):
        self.task, self.cfg, self.mesh = task, cfg, mesh
        self.rules = shd.validate_rules(rules or shd.DEFAULT_RULES, mesh)
        dp = shd.data_parallel_size(mesh, self.rules)
        for name in ("batch_size", "eval_batch_size"):
            if getattr(cfg, name) % dp:
                raise ValueError(f"trainer.{name}={getattr(cfg, name)} must be a multiple of the "
                                 f"data-parallel size {dp} (mesh {dict(mesh.shape)})")
        if cfg.eval_every and cfg.eval_split not in task.eval_splits:
            raise ValueError(
                f"trainer.eval_split={cfg.eval_split!r} has no data (splits with data: "
                f"{sorted(task.eval_splits)}); pick one of those or set trainer.eval_every=0")
        self.tx, self.schedule = make_optimizer(optim, cfg.max_steps)
        cpu_collectives = jax.default_backend() == "cpu" and mesh.devices.size > 1
        self.max_in_flight = cfg.max_steps_in_flight or (1 if cpu_collectives else 8)
        self._setup_state()
        self._setup_steps()

    # ----------------------------------------------------------------------------- state setup
    def _init_fn(self, rng):
        task = self.task
        example = {k: jnp.asarray(v[:1]) for k, v in task.inputs(task.example_batch).items()}
        variables = task.model.init({"params": rng, "dropout": rng}, **example, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params),
                          consts=jax.tree.map(jnp.asarray, task.consts), tx=self.tx)

    def _setup_state(self) -> None:
        boxed = jax.eval_shape(self._init_fn, jax.random.key(0))
        self.state_shardings = shd.tree_shardings(boxed, self.mesh, self.rules)
        self.abstract_state = abstract_with_shardings(nn.meta.unbox(boxed), self.state_shardings)
        self._jit_init = jax.jit(lambda rng: nn.meta.unbox(self._init_fn(rng)),
                                 out_shardings=self.state_shardings)

    def init_state(self, seed: int | None = None) -> TrainState:
        return self._jit_init(jax.random.key(self.cfg.seed if seed is None else seed))

    # ---------------------------------------------------------------------------------- steps
    def _setup_steps(self) -> None:
        task, tx, schedule = self.task, self.tx, self.schedule

        def train_step(state: TrainState, batch, rng):
            rng = jax.random.fold_in(rng, state.step)

            def loss_fn(params):
                out = task.forward(task.model, params, state.consts, task.inputs(batch),
                                   train=True, rng=rng)
                return task.loss_fn(out, batch)

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            metrics = {"train/loss": loss, "train/grad_norm": optax.global_norm(grads),
                       "train/lr": schedule(state.step)}
            return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

        def eval_step(params, consts, batch):
            out = task.forward(task.model, params, consts, task.inputs(batch), train=False, rng=None)
            values = {k: fn(out, batch) for k, fn in task.metric_fns.items()}
            return values, task.example_weight(batch)

        batch_sh = {k: shd.batch_sharding(self.mesh, self.rules, np.ndim(v))
                    for k, v in task.example_batch.items()}
        repl = shd.replicated(self.mesh)
        self.batch_shardings = batch_sh
        self.train_step = jax.jit(train_step, in_shardings=(self.state_shardings, batch_sh, repl),
                                  out_shardings=(self.state_shardings, repl), donate_argnums=(0,))
        self.eval_step = jax.jit(eval_step)

    def put_batch(self, batch) -> dict:
        return shd.shard_batch(batch, self.mesh, self.rules)

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, state: TrainState, batches: Iterable[Mapping[str, np.ndarray]],
                 prefix: str) -> dict[str, float]:
        """Exact means over a whole split: per-example values are summed on the host."""
        sums: dict[str, float] = collections.defaultdict(float)
        count = 0.0
        for batch in batches:
            values, weight = self.eval_step(state.params, state.consts, self.put_batch(batch))
            values, weight = _to_host((values, weight))
            count += float(weight.sum())
            for k, v in values.items():
                sums[k] += float((np.asarray(v, np.float64) * weight).sum())
        return {f"{prefix}/{k}": (s / count if count else 0.0) for k, s in sums.items()}

    # ----------------------------------------------------------------------------------- loop
    def fit(self, workdir: str | Path, logger=None) -> FitResult:
        cfg, task = self.cfg, self.task
        workdir = Path(workdir).absolute()
        target = metric_key(cfg.eval_split, task.target_metric)
        ckpt = Checkpoints(workdir / "checkpoints", keep=cfg.keep_checkpoints, metric=target,
                           mode=task.target_mode)
        timings: dict[str, float] = {}
        better = (lambda a, b: a > b) if task.target_mode == "max" else (lambda a, b: a < b)

        t0 = time.perf_counter()
        restored = ckpt.restore_latest(self.abstract_state)
        if restored is not None:
            state, meta = restored
            tqdm.write(f"resumed from {ckpt.directory / 'latest'} at step {int(state.step)}")
        else:
            state, meta = self.init_state(), {}
        best_metric = meta.get("best_metric")
        best_step = meta.get("best_step")
        bad_evals = int(meta.get("bad_evals", 0))
        stopped_early = bool(meta.get("stopped_early", False))
        timings["setup_s"] = time.perf_counter() - t0

        start = int(state.step)
        rng = jax.device_put(jax.random.key(cfg.seed), shd.replicated(self.mesh))
        batches = task.train_batches(cfg.seed, start)
        in_flight: collections.deque = collections.deque()
        log_acc: dict[str, list] = collections.defaultdict(list)
        train_time, eval_time, compile_s = 0.0, 0.0, None
        bar = tqdm(total=cfg.max_steps, initial=start, desc=f"{task.name}: train",
                   disable=not cfg.progress or jax.process_index() != 0, dynamic_ncols=True)
        step = start
        try:
            while step < cfg.max_steps and not stopped_early:
                t = time.perf_counter()
                batch = self.put_batch(next(batches))
                state, metrics = self.train_step(state, batch, rng)
                step += 1
                in_flight.append(metrics)
                if compile_s is None:
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - t
                # Bound the steps dispatched ahead of the host (CPU collectives can deadlock).
                while len(in_flight) >= self.max_in_flight:
                    for k, v in _to_host(in_flight.popleft()).items():
                        log_acc[k].append(float(v))
                train_time += time.perf_counter() - t
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    while in_flight:
                        for k, v in _to_host(in_flight.popleft()).items():
                            log_acc[k].append(float(v))
                    means = {k: float(np.mean(v)) for k, v in log_acc.items()}
                    log_acc.clear()
                    if logger:
                        logger.log(step, means)
                    bar.set_postfix(loss=f"{means['train/loss']:.4f}",
                                    **({target: f"{best_metric:.4f}"} if best_metric is not None else {}))
                is_eval = cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps)
                if is_eval:
                    te = time.perf_counter()
                    evals = self.evaluate(state, task.eval_splits[cfg.eval_split](),
                                          SPLIT_PREFIX.get(cfg.eval_split, cfg.eval_split))
                    eval_time += time.perf_counter() - te
                    if logger:
                        logger.log(step, evals)
                    value = evals[target]
                    if best_metric is None or better(value, best_metric):
                        best_metric, best_step, bad_evals = value, step, 0
                        ckpt.save_best(step, state, {"step": step}, evals)
                    else:
                        bad_evals += 1
                    if cfg.patience and bad_evals >= cfg.patience:
                        stopped_early = True
                        tqdm.write(f"early stop at step {step}: {target} has not improved for "
                                   f"{bad_evals} evaluations (best {best_metric:.4f} at step {best_step})")
                every = cfg.checkpoint_every or cfg.eval_every or cfg.max_steps
                if step % every == 0 or step == cfg.max_steps or stopped_early:
                    ckpt.save(step, state, {"best_metric": best_metric, "best_step": best_step,
                                            "bad_evals": bad_evals, "stopped_early": stopped_early})
        finally:
            bar.close()
        timings.update(train_s=train_time, valid_eval_s=eval_time, first_step_s=compile_s or 0.0)
        steps_run = step - start
        if steps_run > 1 and compile_s is not None:
            timings["steps_per_s"] = (steps_run - 1) / max(train_time - compile_s, 1e-9)

        # Final evaluation of the best state on whole splits.
        best = ckpt.restore_best(self.abstract_state)
        final_state = best[0] if best is not None else state
        te = time.perf_counter()
        metrics: dict[str, float] = {}
        for split in cfg.final_splits:
            if split in task.eval_splits:
                metrics.update(self.evaluate(final_state, task.eval_splits[split](),
                                             SPLIT_PREFIX.get(split, split)))
        timings["final_eval_s"] = time.perf_counter() - te
        if logger:  # the validation split's curve is already logged: its final values go as best/
            prefix = SPLIT_PREFIX.get(cfg.eval_split, cfg.eval_split) + "/"
            logger.log(step, {("best/" + k if k.startswith(prefix) else k): v
                              for k, v in metrics.items()})
        best_dir = ckpt.best.directory / str(best_step) if best_step is not None else None
        ckpt.close()
        return FitResult(state=final_state, metrics=metrics, best_step=best_step,
                         best_metric=best_metric, steps_run=steps_run, stopped_early=stopped_early,
                         timings=timings, checkpoint_dir=str(ckpt.directory),
                         best_checkpoint=str(best_dir) if best_dir else None)


def _to_host(tree):
    """Device arrays -> numpy, gathering across processes when there are several."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
