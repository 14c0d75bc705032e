"""One trainer for every task: sharded jitted steps, evaluation, checkpoints, early stopping.

Sections: state setup (eval_shape -> logical shardings -> jit init), step functions (pure),
the loop (side effects: logging, checkpoints, early stopping), and final evaluation of the best
state over whole splits with streaming metric accumulators.
"""
from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from mlsd_jax import sharding as shd
from mlsd_jax.errors import NonFiniteError, check
from mlsd_jax.models.embedding import LOOKUPS, ROWS
from mlsd_jax.tasks.base import (Task, init_variables, run_forward, run_forward_collecting,
                                 split_loss)
from mlsd_jax.training import sparse
from mlsd_jax.training.checkpoint import (Checkpoints, abstract_with_shardings,
                                          consts_fingerprint, move_aside, state_signature)
from mlsd_jax.training.optim import OptimConfig, ema_update, make_optimizer, make_sparse_optimizer
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
    resume: bool = True                # false: move old checkpoints aside and start over
    # Batches read and placed on devices by a background thread ahead of the loop (when steps
    # run asynchronously, i.e. max_steps_in_flight > 1); 0 = in the loop.
    prefetch_batches: int = 2

    def __post_init__(self):
        for key in ("max_steps", "batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
            value = getattr(self, key)
            check(isinstance(value, int) and value >= 1, f"trainer.{key}", value,
                  "an integer >= 1")
        for key in ("eval_every", "patience"):
            value = getattr(self, key)
            check(isinstance(value, int) and value >= 0, f"trainer.{key}", value,
                  "an integer >= 0 (0 turns it off)")
        check(isinstance(self.prefetch_batches, int) and self.prefetch_batches >= 0,
              "trainer.prefetch_batches", self.prefetch_batches, "an integer >= 0")
        for key in ("checkpoint_every", "max_steps_in_flight"):
            value = getattr(self, key)
            check(value is None or (isinstance(value, int) and value >= 1), f"trainer.{key}",
                  value, "null or an integer >= 1")


def metric_key(split: str, name: str) -> str:
    """``valid/ndcg@10``, ``test/auc``: every metric names the split it was measured on."""
    return f"{split}/{name}"


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
        self.optim = optim
        self.sparse = bool(optim.embedding.sparse)
        if self.sparse:  # tables updated row by row (training/sparse.py); tx: the other params
            self.tx, self.schedule, self.row_schedule = make_sparse_optimizer(optim, cfg.max_steps)
        else:
            self.tx, self.schedule = make_optimizer(optim, cfg.max_steps)
        cpu_collectives = jax.default_backend() == "cpu" and mesh.devices.size > 1
        self.max_in_flight = cfg.max_steps_in_flight or (1 if cpu_collectives else 8)
        self._setup_state()
        self._setup_steps()

    # ----------------------------------------------------------------------------- state setup
    def _init_fn(self, rng):
        task = self.task
        consts = jax.tree.map(jnp.asarray, task.consts)
        example = {k: jnp.asarray(v[:1]) for k, v in task.inputs(task.example_batch).items()}
        variables = init_variables(task.model, task.forward, consts, example, rng)
        params = variables.pop("params")
        if self.sparse:
            emb = self.optim.embedding
            paths = sparse.table_paths(params, emb.params)
            rest, _ = sparse.split_params(params, paths)
            opt_state = {"dense": self.tx.init(rest),
                         "rows": sparse.init_row_state(params, paths, emb.name,
                                                       emb.initial_accumulator_value)}
        else:
            opt_state = self.tx.init(params)
        ema = jax.tree.map(jnp.copy, params) if self.optim.ema_decay else None
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                          opt_state=opt_state, consts=consts, tx=self.tx, ema_params=ema)

    def _setup_state(self) -> None:
        boxed = jax.eval_shape(self._init_fn, jax.random.key(0))
        self.state_shardings = shd.tree_shardings(boxed, self.mesh, self.rules)
        self.abstract_state = abstract_with_shardings(nn.meta.unbox(boxed), self.state_shardings)
        self._jit_init = jax.jit(lambda rng: nn.meta.unbox(self._init_fn(rng)),
                                 out_shardings=self.state_shardings)

    def init_state(self, seed: int | None = None) -> TrainState:
        return self._jit_init(jax.random.key(self.cfg.seed if seed is None else seed))

    # ---------------------------------------------------------------------------------- steps
    def _train_step(self, state: TrainState, batch, rng):
        if self.sparse:
            return self._sparse_train_step(state, batch, rng)
        task = self.task
        rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            outputs, model_state = run_forward(
                task.model, task.forward, {"params": params, **state.model_state}, state.consts,
                task.inputs(batch), train=True, rng=rng)
            loss, aux = split_loss(task.loss_fn(outputs, batch))
            return loss, (aux, model_state)

        (loss, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.global_norm(grads)
        # A non-finite loss or gradient leaves the state as it was (the host loop then stops).
        # The update runs inside a conditional, so the finite path writes params and moments in
        # place once (no select of new against old over the whole state, which read all of it
        # twice per step) and the other path leaves them untouched, bit for bit.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update():  # the clipping reuses grad_norm (optim.clip_by_global_norm)
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params,
                                                global_norm=grad_norm)
            return optax.apply_updates(state.params, updates), opt_state, model_state

        params, opt_state, model_state = jax.lax.cond(
            finite, update, lambda: (state.params, state.opt_state, state.model_state))
        metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
                   "train/lr": self.schedule(state.step), "train/finite": finite,
                   **{f"train/{k}": v for k, v in aux.items()}}
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state, ema_params=self._ema(state, params))
        return new_state, metrics

    def _sparse_train_step(self, state: TrainState, batch, rng):
        """The step with row-wise table updates: gradients flow to the looked-up rows only."""
        task, emb = self.task, self.optim.embedding
        rng = jax.random.fold_in(rng, state.step)
        paths = sparse.table_paths(state.params, emb.params)
        rest, tables = sparse.split_params(state.params, paths)

        def forward(rest, rows):
            return run_forward_collecting(
                task.model, task.forward,
                {"params": sparse.merge_params(rest, tables), **state.model_state}, state.consts,
                task.inputs(batch), collect=LOOKUPS, inject=ROWS, injected=rows, rng=rng)

        shapes = jax.eval_shape(lambda r: forward(r, None)[3], rest)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

        def loss_fn(rest, rows):
            outputs, model_state, lookups, _ = forward(rest, rows)
            loss, aux = split_loss(task.loss_fn(outputs, batch))
            return loss, (aux, model_state, lookups)

        (loss, (aux, model_state, lookups)), (g_rest, g_rows) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(rest, zeros)
        row_grads = {p: sparse.dedupe(ids, g, tables[p].shape[0])
                     for p, (ids, g) in sparse.row_gradients(lookups, g_rows, paths).items()}
        grad_norm = jnp.sqrt(jnp.square(optax.global_norm(g_rest))
                             + sparse.sum_of_squares(row_grads))
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        scale = jnp.ones((), jnp.float32)
        if self.optim.clip_norm:  # optax.clip_by_global_norm over dense and row grads together
            scale = jnp.where(grad_norm < self.optim.clip_norm, 1.0,
                              self.optim.clip_norm / grad_norm)

        def update():  # the finite path (see _train_step): dense params and table rows
            g_dense = jax.tree.map(lambda g: g * scale.astype(g.dtype), g_rest)
            g_rows = {p: (u, g * scale.astype(g.dtype)) for p, (u, g) in row_grads.items()}
            updates, dense_state = self.tx.update(g_dense, state.opt_state["dense"], rest)
            new_tables, rows_state = sparse.apply_rows(
                tables, state.opt_state["rows"], g_rows, self.row_schedule(state.step),
                name=emb.name, eps=emb.eps)
            return (sparse.merge_params(optax.apply_updates(rest, updates), new_tables),
                    {"dense": dense_state, "rows": rows_state}, model_state)

        params, opt_state, model_state = jax.lax.cond(
            finite, update, lambda: (state.params, state.opt_state, state.model_state))
        metrics = {"train/loss": loss, "train/grad_norm": grad_norm,
                   "train/lr": self.schedule(state.step), "train/finite": finite,
                   **{f"train/{k}": v for k, v in aux.items()}}
        new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                                  opt_state=opt_state, ema_params=self._ema(state, params))
        return new_state, metrics

    def _ema(self, state: TrainState, params):
        if state.ema_params is None:
            return None
        return ema_update(state.ema_params, params, self.optim.ema_decay, state.step)

    def _eval_step(self, variables, consts, batch):
        task = self.task
        outputs, _ = run_forward(task.model, task.forward, variables, consts, task.inputs(batch),
                                 train=False)
        weights = task.example_weight(batch)
        return {name: m.update(outputs, batch, weights) for name, m in task.metrics.items()}

    def _setup_steps(self) -> None:
        batch_sh = {k: shd.batch_sharding(self.mesh, self.rules, np.ndim(v))
                    for k, v in self.task.example_batch.items()}
        repl = shd.replicated(self.mesh)
        self.batch_shardings = batch_sh
        self.train_step = jax.jit(self._train_step,
                                  in_shardings=(self.state_shardings, batch_sh, repl),
                                  out_shardings=(self.state_shardings, repl), donate_argnums=(0,))
        self.eval_step = jax.jit(self._eval_step)

    def put_batch(self, batch) -> dict:
        return shd.shard_batch(batch, self.mesh, self.rules)

    # ----------------------------------------------------------------------------- evaluation
    def evaluate(self, state: TrainState, split: str) -> dict[str, float]:
        """The task's metrics over the whole ``split``, keyed ``<split>/<name>``."""
        if self.task.evaluator is not None:
            values = self.task.evaluator(self, state, split)
        else:
            values = self.evaluate_batches(state, self.task.eval_splits[split]())
        return {metric_key(split, k): float(v) for k, v in values.items()}

    def evaluate_batches(self, state: TrainState, batches: Iterable[Mapping[str, np.ndarray]]
                         ) -> dict[str, float]:
        """Merges each metric's per-batch state on the host, then computes it once."""
        metrics = self.task.metrics
        acc: dict = {name: None for name in metrics}
        variables = state.variables
        for batch in batches:
            states = _to_host(self.eval_step(variables, state.consts, self.put_batch(batch)))
            for name, m in metrics.items():
                acc[name] = m.merge(acc[name], states[name])
        out: dict[str, float] = {}
        for name, m in metrics.items():
            if acc[name] is None:
                raise ValueError(f"metric {name!r}: the split had no batches")
            value = m.compute(acc[name])
            if isinstance(value, Mapping):  # one accumulator, several numbers (curves, per class)
                out.update({f"{name}/{k}": float(v) for k, v in value.items()})
            else:
                out[name] = float(value)
        return out

    # ----------------------------------------------------------------------------------- loop
    def _restore_or_init(self, ckpt: Checkpoints) -> tuple[TrainState, dict]:
        model = type(self.task.model).__name__
        ckpt.check_owner({"task": self.task.name, "state": state_signature(self.abstract_state),
                          "consts": consts_fingerprint(self.task.consts)},
                         f"task {self.task.name}, model {model}")
        restored = ckpt.restore_latest(self.abstract_state)
        if restored is None:
            return self.init_state(), {}
        state, meta = restored
        tqdm.write(f"resumed from {ckpt.directory / 'latest'} at step {int(state.step)}")
        return state, meta

    def fit(self, workdir: str | Path, logger=None) -> FitResult:
        """Trains to ``max_steps`` (or early stop), then evaluates the best state on every split.

        Model selection (early stopping, the best checkpoint, the returned ``best_metric``)
        reads ``trainer.eval_split`` (validation) only; the test split is evaluated once, at
        the end, on the state that validation chose.
        """
        cfg, task = self.cfg, self.task
        workdir = Path(workdir).absolute()
        target = metric_key(cfg.eval_split, task.target_metric)
        if not cfg.resume:
            moved = move_aside(workdir / "checkpoints")
            if moved:
                tqdm.write(f"trainer.resume=false: moved old checkpoints to {moved}")
        ckpt = Checkpoints(workdir / "checkpoints", keep=cfg.keep_checkpoints, metric=target,
                           mode=task.target_mode)
        t0 = time.perf_counter()
        state, meta = self._restore_or_init(ckpt)
        if logger is not None and hasattr(logger, "rewind"):
            logger.rewind(int(state.step))  # a resumed run does not log its steps twice
        loop = _Loop(self, ckpt, logger, target, meta)
        loop.timings["setup_s"] = time.perf_counter() - t0
        state = loop.run(state)

        best = ckpt.restore_best(self.abstract_state)
        final_state = best[0] if best is not None else state
        te = time.perf_counter()
        metrics: dict[str, float] = {}
        for split in cfg.final_splits:
            if split in task.eval_splits:
                metrics.update(self.evaluate(final_state, split))
        loop.timings["final_eval_s"] = time.perf_counter() - te
        if logger:  # the validation curve is already logged: its final values go as best/
            prefix = cfg.eval_split + "/"
            logger.log(loop.step, {("best/" + k if k.startswith(prefix) else k): v
                                   for k, v in metrics.items()})
        best_dir = ckpt.best.directory / str(loop.best_step) if loop.best_step is not None else None
        ckpt.close()
        return FitResult(state=final_state, metrics=metrics, best_step=loop.best_step,
                         best_metric=loop.best_metric, steps_run=loop.step - loop.start,
                         stopped_early=loop.stopped_early, timings=loop.timings,
                         checkpoint_dir=str(ckpt.directory),
                         best_checkpoint=str(best_dir) if best_dir else None)


class _Loop:
    """The training loop's side effects: dispatch, logging, evaluation, checkpoints, stopping."""

    def __init__(self, trainer: Trainer, ckpt: Checkpoints, logger, target: str, meta: dict):
        self.trainer, self.ckpt, self.logger, self.target = trainer, ckpt, logger, target
        self.cfg, self.task = trainer.cfg, trainer.task
        self.best_metric = meta.get("best_metric")
        self.best_step = meta.get("best_step")
        self.bad_evals = int(meta.get("bad_evals", 0))
        self.stopped_early = bool(meta.get("stopped_early", False))
        self.timings: dict[str, float] = {}
        self.in_flight: collections.deque = collections.deque()
        self.log_acc: dict[str, list] = collections.defaultdict(list)
        self.step = self.start = 0

    def _better(self, value: float) -> bool:
        if self.best_metric is None:
            return True
        if self.task.target_mode == "max":
            return value > self.best_metric
        return value < self.best_metric

    def _drain(self, keep: int) -> None:
        while len(self.in_flight) > keep:
            step, metrics = self.in_flight.popleft()
            metrics = _to_host(metrics)
            if not bool(metrics.pop("train/finite")):
                raise NonFiniteError(
                    f"step {step}: the training loss is {float(metrics['train/loss'])} and the "
                    f"gradient norm {float(metrics['train/grad_norm'])}; training stopped and the "
                    f"update was not applied (checkpoints hold the last good state). Likely "
                    f"causes: NaN/inf in the input features or labels, labels outside the loss's "
                    f"range, or a learning rate too high (now {float(metrics['train/lr']):g}).")
            for k, v in metrics.items():
                self.log_acc[k].append(float(v))

    def _log_train(self, bar) -> None:
        self._drain(0)
        means = {k: float(np.mean(v)) for k, v in self.log_acc.items()}
        self.log_acc.clear()
        if self.logger:
            self.logger.log(self.step, means)
        best = {self.target: f"{self.best_metric:.4f}"} if self.best_metric is not None else {}
        bar.set_postfix(loss=f"{means['train/loss']:.4f}", **best)

    def _evaluate(self, state) -> None:
        cfg = self.cfg
        evals = self.trainer.evaluate(state, cfg.eval_split)
        if self.logger:
            self.logger.log(self.step, evals)
        value = evals[self.target]
        if self._better(value):
            self.best_metric, self.best_step, self.bad_evals = value, self.step, 0
            self.ckpt.save_best(self.step, state, {"step": self.step}, evals)
        else:
            self.bad_evals += 1
        if cfg.patience and self.bad_evals >= cfg.patience:
            self.stopped_early = True
            tqdm.write(f"early stop at step {self.step}: {self.target} has not improved for "
                       f"{self.bad_evals} evaluations (best {self.best_metric:.4f} at step "
                       f"{self.best_step})")

    def run(self, state: TrainState) -> TrainState:
        cfg, trainer = self.cfg, self.trainer
        self.step = self.start = int(state.step)
        rng = jax.device_put(jax.random.key(cfg.seed), shd.replicated(trainer.mesh))
        batches = device_batches(self.task.train_batches(cfg.seed, self.start),
                                 trainer.put_batch, prefetch=cfg.prefetch_batches
                                 if trainer.max_in_flight > 1 else 0)
        max_in_flight = trainer.max_in_flight
        train_time, eval_time, compile_s = 0.0, 0.0, None
        bar = tqdm(total=cfg.max_steps, initial=self.start, desc=f"{self.task.name}: train",
                   disable=not cfg.progress or jax.process_index() != 0, dynamic_ncols=True)
        try:
            while self.step < cfg.max_steps and not self.stopped_early:
                t = time.perf_counter()
                state, metrics = trainer.train_step(state, next(batches), rng)
                self.step += 1
                self.in_flight.append((self.step, metrics))
                if compile_s is None:
                    jax.block_until_ready(metrics)
                    compile_s = time.perf_counter() - t
                self._drain(max_in_flight - 1)  # bound the steps dispatched ahead of the host
                train_time += time.perf_counter() - t
                bar.update(1)
                last = self.step == cfg.max_steps
                if self.step % cfg.log_every == 0 or last:
                    self._log_train(bar)
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                    te = time.perf_counter()
                    self._evaluate(state)
                    eval_time += time.perf_counter() - te
                every = cfg.checkpoint_every or cfg.eval_every or cfg.max_steps
                if self.step % every == 0 or last or self.stopped_early:
                    self.ckpt.save(self.step, state, {
                        "best_metric": self.best_metric, "best_step": self.best_step,
                        "bad_evals": self.bad_evals, "stopped_early": self.stopped_early})
        finally:
            bar.close()
            batches.close()
        self.timings.update(train_s=train_time, valid_eval_s=eval_time,
                            first_step_s=compile_s or 0.0)
        steps_run = self.step - self.start
        if steps_run > 1 and compile_s is not None:
            self.timings["steps_per_s"] = (steps_run - 1) / max(train_time - compile_s, 1e-9)
        return state


def device_batches(batches: Iterator, put, prefetch: int = 0) -> Iterator:
    """Host batches -> device batches; with ``prefetch > 0`` a background thread reads and
    places up to ``prefetch`` batches ahead, so input work overlaps step dispatch. Exceptions in
    the thread surface at the next ``next()``; ``close()`` stops the thread."""
    if prefetch <= 0:
        return (put(b) for b in batches)
    return _Prefetcher(batches, put, prefetch)


class _Prefetcher:
    def __init__(self, batches, put, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(batches, put), daemon=True,
                                        name="mlsd-prefetch")
        self._thread.start()

    def _fill(self, batches, put):
        try:
            for batch in batches:
                item = ("batch", put(batch))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(("end", None))
        except BaseException as e:  # surfaced in the training loop
            self._queue.put(("error", e))

    def __iter__(self):
        return self

    def __next__(self):
        kind, value = self._queue.get()
        if kind == "error":
            raise value
        if kind == "end":
            raise StopIteration
        return value

    def close(self) -> None:
        self._stop.set()


def _to_host(tree):
    """Device arrays -> numpy, gathering across processes when there are several."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)
