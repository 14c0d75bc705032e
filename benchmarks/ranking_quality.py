"""Ranking quality: our neural rankers vs LightGBM lambdarank on the same query splits.

    python benchmarks/ranking_quality.py                      # both embedded datasets
    python benchmarks/ranking_quality.py --datasets mslr_sample --letor-gb 2
    python benchmarks/ranking_quality.py --quick --out /tmp/q/ranking_quality   # smoke run

Every model is scored by the same evaluator (mlsd_jax.metrics over whole, unpadded lists of the
same test queries), so the numbers are comparable. Each model runs in its own process so its
peak resident memory is its own. Writes benchmarks/results/ranking_quality.{json,md}.

With --letor-gb N it also writes an N-GB LETOR file (the MSLR sample's lines repeated under new
query ids) and converts it with the streaming reader, recording throughput and peak memory.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ["ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "mrr", "map"]

# Our configurations: (label, overrides). Dataset-specific settings come from the configs.
OURS = [
    ("attn_ranker + lambdarank", ["ranking/model=attn_ranker", "ranking/loss=lambdarank"]),
    ("attn_ranker + softmax", ["ranking/model=attn_ranker", "ranking/loss=softmax"]),
    ("mlp_ranker + lambdarank", ["ranking/model=mlp_ranker", "ranking/loss=lambdarank"]),
]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def evaluate_scores(store, scores_per_query) -> dict[str, float]:
    """Our metrics over whole lists: all queries padded to one length, masked, one call each."""
    import jax.numpy as jnp

    from mlsd_jax.tasks.ranking import ranking_metric

    length = max(len(s) for s in scores_per_query)
    scores = np.full((len(store), length), -1e9, np.float32)
    labels = np.zeros((len(store), length), np.float32)
    mask = np.zeros((len(store), length), bool)
    for i, s in enumerate(scores_per_query):
        n = len(s)
        scores[i, :n], labels[i, :n], mask[i, :n] = s, store.query(i)[1], True
    return {f"test/{m}": float(ranking_metric(m)(jnp.asarray(scores), jnp.asarray(labels),
                                                 where=jnp.asarray(mask)))
            for m in METRICS}


def _stack(store):
    feats, labels, groups = [], [], []
    for i in range(len(store)):
        f, y = store.query(i)
        feats.append(np.asarray(f, np.float32))
        labels.append(np.asarray(y))
        groups.append(len(y))
    return np.concatenate(feats), np.concatenate(labels), np.asarray(groups)


def run_lightgbm(dataset: str, seed: int, queue) -> None:
    import lightgbm as lgb

    from mlsd_jax.data.ranking import load_ranking_splits

    from omegaconf import OmegaConf

    # The same split as `experiments.run ranking/data=<dataset>`: read the data config it would use.
    data = OmegaConf.load(ROOT / "configs" / "ranking" / "data" / f"{dataset}.yaml")
    splits = load_ranking_splits(dataset, num_features=data.num_features,
                                 valid_fraction=data.valid_fraction,
                                 test_fraction=data.test_fraction, seed=data.seed)
    t0 = time.perf_counter()
    x, y, g = _stack(splits["train"])
    xv, yv, gv = _stack(splits["valid"])
    # Early stopping on the same validation queries our trainer uses.
    params = dict(objective="lambdarank", learning_rate=0.05, num_leaves=31, min_data_in_leaf=20,
                  bagging_fraction=0.8, bagging_freq=1, feature_fraction=0.8, seed=seed,
                  metric="ndcg", eval_at=[10], num_threads=os.cpu_count(), verbose=-1)
    train = lgb.Dataset(x, y.astype(int), group=g)
    valid = lgb.Dataset(xv, yv.astype(int), group=gv, reference=train)
    model = lgb.train(params, train, num_boost_round=2000, valid_sets=[valid],
                      callbacks=[lgb.early_stopping(100, verbose=False)])
    test = splits["test"]
    scores = [model.predict(np.asarray(test.query(i)[0], np.float32),
                            num_iteration=model.best_iteration) for i in range(len(test))]
    wall = time.perf_counter() - t0  # fit + predict, data already loaded
    rss = peak_rss_mb()  # before the evaluator imports JAX
    metrics = evaluate_scores(test, scores)
    queue.put({"model": "LightGBM lambdarank", "metrics": metrics, "wall_s": wall, "best_iteration": int(model.best_iteration),
               "peak_rss_mb": rss, "lightgbm": lgb.__version__,
               "test_queries": len(test), "test_docs": int(np.sum(test.list_sizes))})


def run_ours(dataset: str, label: str, overrides: list[str], seed: int, workdir: Path) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "experiments.run", "+task=ranking", f"ranking/data={dataset}",
           *overrides, f"seed={seed}", "export.enabled=false", "trainer.progress=false",
           f"hydra.run.dir={workdir}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    res = json.loads((workdir / "results.json").read_text())
    return {"model": label, "metrics": {k: v for k, v in res["metrics"].items() if k.startswith("test/")},
            # Comparable to LightGBM's: setup + training (with validation evals) + final eval.
            "wall_s": sum(res["timings"].get(k, 0.0) for k in
                          ("setup_s", "train_s", "valid_eval_s", "final_eval_s")),
            "process_s": time.perf_counter() - t0, "train_s": res["timings"]["train_s"],
            "steps": res["steps_run"], "best_step": res["best_step"],
            "peak_rss_mb": res["environment"].get("peak_rss_mb"), "overrides": overrides,
            "test_queries": res["data"]["test_queries"], "test_docs": res["data"]["test_docs"]}


def letor_streaming(gb: float) -> dict:
    """Writes a ``gb``-GB LETOR file and converts it in a child process (peak RSS is its own)."""
    from mlsd_jax.data.fetch import fetch_packaged
    from mlsd_jax.data.ranking import MSLR_SAMPLE_TRAIN

    lines = Path(fetch_packaged(MSLR_SAMPLE_TRAIN)).read_text().splitlines()
    tmp = Path(tempfile.mkdtemp(prefix="letor_bench_"))
    path = tmp / "big.txt"
    target = int(gb * 1024 ** 3)
    written, rep = 0, 0
    with open(path, "w") as f:
        while written < target:
            block = []
            for line in lines:
                label, qid, rest = line.split(" ", 2)
                block.append(f"{label} qid:{rep}{qid[4:]:0>3} {rest}\n")
            text = "".join(block)
            f.write(text)
            written += len(text)
            rep += 1
    code = ("import resource, time, sys, json; sys.path.insert(0, %r);"
            "from mlsd_jax.data.letor import build_query_store;"
            "t=time.perf_counter(); s=build_query_store(%r, %r, num_features=136);"
            "dt=time.perf_counter()-t;"
            "print(json.dumps({'docs': int(s.n_docs), 'queries': len(s), 'seconds': dt,"
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
            % (str(ROOT), str(path), str(tmp / "store")))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    out.update(file_gb=size / 1024 ** 3, mb_per_s=size / 1024 ** 2 / out["seconds"])
    subprocess.run(["rm", "-rf", str(tmp)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["mslr_sample", "bio_kddcup04"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--letor-gb", type=float, default=0.0)
    ap.add_argument("--out", default=str(RESULTS / "ranking_quality"))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: MSLR sample, one seed, LightGBM and one of ours (debug=fast)")
    args = ap.parse_args()
    ours = OURS
    if args.quick:
        args.datasets, args.seeds = ["mslr_sample"], args.seeds[:1]
        ours = [(label, overrides + ["debug=fast"]) for label, overrides in OURS[:1]]

    rows = []
    ctx = mp.get_context("spawn")
    for dataset in args.datasets:
        for seed in args.seeds:
            q = ctx.Queue()
            p = ctx.Process(target=run_lightgbm, args=(dataset, seed, q))
            p.start()
            row = q.get()
            p.join()
            rows.append({"dataset": dataset, "seed": seed, **row})
            print(json.dumps(rows[-1]), flush=True)
            for label, overrides in ours:
                with tempfile.TemporaryDirectory() as d:
                    rows.append({"dataset": dataset, "seed": seed,
                                 **run_ours(dataset, label, overrides, seed, Path(d))})
                print(json.dumps(rows[-1]), flush=True)

    for ds in args.datasets:  # every model must be scored on the same test queries
        sizes = {(r["test_queries"], r["test_docs"]) for r in rows if r["dataset"] == ds}
        if len(sizes) != 1:
            raise RuntimeError(f"{ds}: models were scored on different test splits: {sizes}")
    report = {"rows": rows, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                        "platform": platform.platform()}}
    if args.letor_gb:
        report["letor_streaming"] = letor_streaming(args.letor_gb)
        print(json.dumps(report["letor_streaming"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(to_markdown(report))
    print(to_markdown(report))


def to_markdown(report: dict) -> str:
    lines = []
    by_ds: dict[str, list] = {}
    for r in report["rows"]:
        by_ds.setdefault(r["dataset"], []).append(r)
    for ds, rows in by_ds.items():
        models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
        lines += [f"### {ds} (test split; mean over seeds {sorted({r['seed'] for r in rows})})", "",
                  "| model | " + " | ".join(METRICS) + " | fit s | peak RSS MB | NDCG@10 vs LightGBM |",
                  "|---" * (len(METRICS) + 4) + "|"]
        lgb = np.mean([r["metrics"]["test/ndcg@10"] for r in rows if r["model"].startswith("LightGBM")])
        for m in models:
            rs = [r for r in rows if r["model"] == m]
            vals = [np.mean([r["metrics"][f"test/{k}"] for r in rs]) for k in METRICS]
            wall = np.mean([r["wall_s"] for r in rs])
            rss = np.mean([r.get("peak_rss_mb") or np.nan for r in rs])
            ratio = vals[METRICS.index("ndcg@10")] / lgb if lgb else float("nan")
            lines.append(f"| {m} | " + " | ".join(f"{v:.4f}" for v in vals)
                         + f" | {wall:.1f} | {rss:.0f} | {ratio:.3f}x |")
        lines.append("")
    if "letor_streaming" in report:
        s = report["letor_streaming"]
        lines += ["### Streaming LETOR conversion", "",
                  f"{s['file_gb']:.2f} GB file, {s['docs']:,} docs, {s['queries']:,} queries: "
                  f"{s['seconds']:.1f} s ({s['mb_per_s']:.0f} MB/s), peak RSS {s['peak_rss_mb']:.0f} MB", ""]
    lines.append(f"Machine: {report['machine']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
