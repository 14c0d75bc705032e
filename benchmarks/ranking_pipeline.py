"""Ranking input pipeline: per-record padding vs batch-at-a-time gathering, against the train step.

    python benchmarks/ranking_pipeline.py                     # batches of 8 and 64 lists x 128
    python benchmarks/ranking_pipeline.py --quick             # short timings (XLA compiles dominate)
    python benchmarks/ranking_pipeline.py --quick --no-train  # pipelines only: a few seconds
    python benchmarks/ranking_pipeline.py --store DIR --out-dir DIR --batches 8 64 256

On the embedded MSLR-WEB10K sample (loaded as ``benchmarks/ranking_throughput.py`` loads it), for
each batch size B (lists of 128 documents, 136 features) it measures, on the host:

* ``per_record``: the previous pipeline, ``mlsd_jax.data.lists.per_record_train_batches`` (grain
  ``shuffle -> repeat -> random_map(pad_list) -> batch``), with the ranking config's
  ``data.num_threads`` read threads and a prefetch buffer of 4, as training ran it;
* ``batched``: ``mlsd_jax.data.lists.train_batches`` (one gather per batch), same threads and
  prefetch: the iterator the trainer consumes;
* ``batched_gather``: ``TrainBatcher[step]`` called in a loop on one thread (no grain): the cost
  of building one batch;

and, on the JAX default device, the default ranker's (``+task=ranking``: attention ranker,
LambdaRank, AdamW) jitted ``Trainer.train_step``:

* ``train_step``: on a pool of batches staged on the device beforehand (compute only);
* ``fed_by_host_pool``: fed from a pool of ready numpy batches (``put_batch`` -> ``train_step``):
  the most a training loop can reach with an infinitely fast pipeline;
* ``fed_by_batched`` / ``fed_by_per_record``: fed live by each pipeline (``next`` -> ``put_batch``
  -> ``train_step``), with the trainer's own bound on steps in flight.

Batches/s and steps/s are medians over repeats (``measure_steps`` of ranking_throughput: the
clock stops after a final sync). ``headroom`` = batched batches/s / train-step steps/s: above 1
the pipeline keeps up with the step. Results: ``benchmarks/results/ranking_pipeline_<device>
.{json,md}`` (``--out-dir`` to change).
"""
from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ranking_throughput import (LIST_SIZE, RESULTS, busy_cores, cpu_model,  # noqa: E402
                                device_tag, measure_steps, open_store)

PREFETCH = 4
README_H100_FIT = 211  # steps/s, README: the default run on the H100, bound by the host pipeline


def settings(quick: bool, on_gpu: bool) -> dict:
    """Timing budgets; ``measure_steps`` keys plus the pipeline's own."""
    if quick:
        return dict(repeats=1, train_target_s=0.1, pipe_target_s=0.1, warmup_steps=1,
                    max_steps=5000, pool=2, pipe_min_batches=5)
    return dict(repeats=5, train_target_s=0.5 if on_gpu else 1.5, pipe_target_s=1.0,
                warmup_steps=3, max_steps=5000, pool=8, pipe_min_batches=10)


def measure_pipeline(next_batch, cfg: dict) -> dict:
    """Host batches/s of ``next_batch()``: median over repeats of runs of about
    ``pipe_target_s`` (at least ``pipe_min_batches`` batches). The first ``PREFETCH + 2`` batches
    (thread start-up, the prefetch buffer) are not timed, so the rate is the production rate."""
    t = time.perf_counter()
    next_batch()
    first = time.perf_counter() - t
    for _ in range(PREFETCH + 2):
        next_batch()
    rates = []
    for _ in range(cfg["repeats"]):
        n, t = 0, time.perf_counter()
        while n < cfg["pipe_min_batches"] or time.perf_counter() - t < cfg["pipe_target_s"]:
            next_batch()
            n += 1
        rates.append(n / (time.perf_counter() - t))
    return {"batches_per_s": float(np.median(rates)), "repeats_batches_per_s": rates,
            "first_batch_s": first}


def pipelines(store, batch: int, num_threads: int, cfg: dict) -> dict:
    from mlsd_jax.data import lists

    kw = dict(list_size=LIST_SIZE, batch_size=batch, seed=0)
    old = lists.per_record_train_batches(store, num_threads=num_threads, prefetch=PREFETCH, **kw)
    new = lists.train_batches(store, num_threads=num_threads, prefetch=PREFETCH, **kw)
    batcher = lists.TrainBatcher(store, **kw)
    steps = iter(range(10**9))
    rows = {"per_record": measure_pipeline(lambda: next(old), cfg),
            "batched": measure_pipeline(lambda: next(new), cfg),
            "batched_gather": measure_pipeline(lambda: batcher[next(steps)], cfg)}
    for r in rows.values():
        r["lists_per_s"] = r["batches_per_s"] * batch
    return rows


def build_trainer(batch: int):
    """The default ranking run's task and trainer (``+task=ranking``) on one device."""
    from hydra import compose, initialize_config_dir

    from mlsd_jax import sharding as shd
    from mlsd_jax import tasks
    from mlsd_jax.experiment import config_dir, typed
    from mlsd_jax.training.optim import OptimConfig
    from mlsd_jax.training.trainer import Trainer, TrainerConfig

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["+task=ranking", f"trainer.batch_size={batch}",
                                           "trainer.progress=false"])
    task = tasks.build(cfg)
    mesh = shd.make_mesh({"axes": ["data", "model"], "shape": [-1, 1], "num_devices": 1})
    trainer = Trainer(task, typed(TrainerConfig, cfg.trainer), typed(OptimConfig, cfg.optim), mesh)
    return cfg, trainer


def train_rows(store, batch: int, num_threads: int, cfg: dict) -> dict:
    import jax

    from mlsd_jax.data import lists

    model_cfg, trainer = build_trainer(batch)
    kw = dict(list_size=LIST_SIZE, batch_size=batch, seed=0)
    batcher = lists.TrainBatcher(store, **kw)
    staged = [trainer.put_batch(batcher[s]) for s in range(cfg["pool"])]
    rng = jax.device_put(jax.random.key(0), jax.sharding.NamedSharding(
        trainer.mesh, jax.sharding.PartitionSpec()))
    box = {"state": trainer.init_state(), "i": 0, "metrics": None}

    def run_staged(n):
        st, i = box["state"], box["i"]
        for _ in range(n):
            st, box["metrics"] = trainer.train_step(st, staged[i % len(staged)], rng)
            i += 1
        box["state"], box["i"] = st, i

    def sync():
        jax.block_until_ready((box["state"], box["metrics"]))

    def fed_by(it):
        in_flight: collections.deque = collections.deque()

        def run_n(n):
            st = box["state"]
            for _ in range(n):
                st, m = trainer.train_step(st, trainer.put_batch(next(it)), rng)
                in_flight.append(m)
                while len(in_flight) >= trainer.max_in_flight:  # the trainer's bound
                    jax.block_until_ready(in_flight.popleft())
            box["state"], box["metrics"] = st, m
            in_flight.clear()
        return run_n

    out = {"train_step": measure_steps(run_staged, sync, cfg)}
    pool = [batcher[s] for s in range(cfg["pool"])]
    out["fed_by_host_pool"] = measure_steps(fed_by(itertools.cycle(pool)), sync, cfg)
    out["fed_by_batched"] = measure_steps(fed_by(lists.train_batches(
        store, num_threads=num_threads, prefetch=PREFETCH, **kw)), sync, cfg)
    out["fed_by_per_record"] = measure_steps(fed_by(lists.per_record_train_batches(
        store, num_threads=num_threads, prefetch=PREFETCH, **kw)), sync, cfg)
    out["final_loss"] = float(box["metrics"]["train/loss"])
    out["model"] = str(model_cfg.model.get("_target_"))
    out["max_steps_in_flight"] = trainer.max_in_flight
    return out


def _f(x):
    return "—" if x is None else (f"{x:,.0f}" if x >= 100 else f"{x:.3g}")


def markdown(res: dict) -> str:
    d, s = res["device"], res["settings"]
    lines = [
        f"# Ranking input pipeline vs train step — {d['tag']}",
        "",
        f"- host: {d['host_cpus']} CPU cores ({d['host_cpu']}); JAX device `{d['jax']}` "
        f"({d['jax_platform']}); jax {res['versions']['jax']}, numpy {res['versions']['numpy']}, "
        f"grain {res['versions']['grain']}",
        f"- data: {s['data']}; lists of {LIST_SIZE} docs (longer ones subsampled, shorter padded)",
        f"- pipelines: grain with {s['num_threads']} read threads (`--num-threads`; the ranking "
        f"config's `data.num_threads` is 2) and a prefetch buffer of {PREFETCH}; "
        "`batched_gather` is one thread, no grain",
        (f"- train step: `+task=ranking` defaults ({res['model']}, LambdaRank, AdamW), jitted "
         f"`Trainer.train_step` on 1 device, up to {res['max_steps_in_flight']} steps in flight "
         "when fed live" if res["model"] else "- train step: not measured (--no-train)")
        + f"; medians of {s['repeats']} runs" + (" (--quick)" if s["quick"] else ""),
        "",
        "| batch | per-record batches/s | batched batches/s | speed-up | one-thread gather "
        "batches/s | train step steps/s (staged) | fed by ready host batches | fed by batched | "
        "fed by per-record | headroom (batched / step) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        p = r["pipeline"]
        t = {k: v for k, v in r["train"].items() if isinstance(v, dict)}
        rate = lambda k: t.get(k, {}).get("steps_per_s")  # noqa: E731
        lines.append(
            f"| {r['batch']} x {LIST_SIZE} | {_f(p['per_record']['batches_per_s'])} | "
            f"{_f(p['batched']['batches_per_s'])} | **{r['speedup']:.0f}x** | "
            f"{_f(p['batched_gather']['batches_per_s'])} | {_f(rate('train_step'))} | "
            f"{_f(rate('fed_by_host_pool'))} | {_f(rate('fed_by_batched'))} | "
            f"{_f(rate('fed_by_per_record'))} | "
            + ("—" if r["headroom"] is None else f"{r['headroom']:.1f}x") + " |")
    if res["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="a converted query store (see ranking_throughput.py "
                   "--export-store); default: the MSLR sample (fetched and cached)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--batches", type=int, nargs="+", default=[8, 64],
                   help="global batch sizes in lists")
    p.add_argument("--num-threads", type=int, default=2,
                   help="grain read threads (the ranking config's data.num_threads)")
    p.add_argument("--quick", action="store_true",
                   help="short timed runs: a fraction of a second per row plus the XLA compiles")
    p.add_argument("--no-train", action="store_true",
                   help="pipelines only (no JAX train step): a few seconds with --quick")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    busy_start = busy_cores()
    store = open_store(args.store)

    import jax

    plat = jax.default_backend()
    cfg = settings(args.quick, plat != "cpu")
    rows = []
    for batch in args.batches:
        print(f"batch {batch}: pipelines ...", flush=True)
        pipe = pipelines(store, batch, args.num_threads, cfg)
        new_rate = pipe["batched"]["batches_per_s"]
        row = {"batch": batch, "pipeline": pipe, "train": {},
               "speedup": new_rate / pipe["per_record"]["batches_per_s"], "headroom": None}
        if not args.no_train:
            print(f"batch {batch}: train step ...", flush=True)
            row["train"] = train_rows(store, batch, args.num_threads, cfg)
            row["headroom"] = new_rate / row["train"]["train_step"]["steps_per_s"]
        rows.append(row)
        print(json.dumps({k: round(v["batches_per_s"], 1) for k, v in pipe.items()}),
              {k: round(v["steps_per_s"], 1) for k, v in row["train"].items()
               if isinstance(v, dict)}, flush=True)
    busy_end = busy_cores()

    dev = jax.devices()[0]
    notes = []
    busy = [b for b in (busy_start, busy_end) if b is not None]
    if plat == "cpu" and busy and max(busy) > 0.25:
        notes.append(f"other work kept {max(busy):.1f} of {os.cpu_count()} cores busy before or "
                     "after the run: CPU figures are disturbed")
    if plat == "cpu":
        notes.append("on CPU the pipeline threads and XLA's step share the same cores, so the "
                     "fed rates are below both the step and the pipeline alone")
    b8 = next((r for r in rows if r["batch"] == 8), None)
    if b8:
        notes.append(
            f"README: the H100 ran the default run (8 lists x 128) at {README_H100_FIT} steps/s, "
            f"bound by the per-record pipeline; here the batched pipeline makes "
            f"{b8['pipeline']['batched']['batches_per_s']:,.0f} batches/s of 8 lists "
            f"({b8['pipeline']['batched']['batches_per_s'] / README_H100_FIT:.0f}x that rate) vs "
            f"{b8['pipeline']['per_record']['batches_per_s']:,.0f} for the per-record one")
    from importlib.metadata import version

    results = {
        "benchmark": "ranking_pipeline",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": {"tag": device_tag(dev.device_kind, plat), "jax": dev.device_kind,
                   "jax_platform": plat, "host_cpus": os.cpu_count(), "host_cpu": cpu_model(),
                   "other_busy_cores_before_after": [busy_start, busy_end],
                   "machine": platform.platform()},
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "numpy": np.__version__, "grain": version("grain")},
        "settings": {**cfg, "quick": args.quick, "num_threads": args.num_threads,
                     "prefetch": PREFETCH, "list_size": LIST_SIZE,
                     "data": (f"MSLR-WEB10K Fold1 training sample, {len(store)} queries, "
                              f"{int(np.sum(store.list_sizes))} docs, "
                              f"{store.num_features} features")},
        "model": rows[0]["train"].get("model") if rows else None,
        "max_steps_in_flight": rows[0]["train"].get("max_steps_in_flight") if rows else None,
        "readme_h100_fit_steps_per_s": README_H100_FIT,
        "rows": rows, "notes": notes,
    }
    results["wall_s"] = time.perf_counter() - t_start
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"ranking_pipeline_{results['device']['tag']}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    md = markdown(results)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
