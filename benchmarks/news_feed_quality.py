"""News feed quality: NRMS against popularity and recency on held-out simulated users.

Each seed ``s`` simulates its own click log (``data.simulator.seed=s``: users, impressions and
clicks are SIMULATED over the real News Articles corpus, see mlsd_jax/data/news.py) and trains
NRMS with model seed ``s`` through `mlsd_jax.experiment.run` (early stopping and the best
checkpoint on validation AUC). The baselines are scored by the task itself on the same
impressions with the same metric code (`results.json` -> `data.baselines`):

  * popularity: clicks in the training split (ties: newer first);
  * recency: newest first by the time an article was first shown (ties: more clicks first).

The simulator's own P(click | examined) of every shown article is scored too, as the ceiling a
model of this log could reach (the position effect is noise to every scorer). The MIND-small
NRMS figures from ANCHORS.md are printed beside the table only to show what the metrics look
like on real MIND: they are another dataset and not comparable.

    python benchmarks/news_feed_quality.py --seeds 0 1 2
    python benchmarks/news_feed_quality.py --quick        # one seed, debug-sized: a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = ("auc", "mrr", "ndcg@5", "ndcg@10")
# ANCHORS.md: MIND-small, NRMS (3 seeds), per-impression AUC / MRR / nDCG@5 / nDCG@10 (read).
MIND_SMALL_NRMS = {"auc": 0.6614, "mrr": 0.3135, "ndcg@5": 0.3469, "ndcg@10": 0.4096}


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def oracle_metrics(cfg) -> dict[str, float]:
    """The task's metrics on the test split with the simulator's P(click | examined) as scores."""
    from mlsd_jax.data import news as nd
    from mlsd_jax.metrics.streaming import evaluate_arrays
    from mlsd_jax.tasks import news_feed as nf

    path = nd.simulated_mind(nd.ClickModel(**dict(cfg.data.simulator)),
                             cfg.data.get("articles_path"))
    test = nd.load_mind(path).splits["test"]
    attraction = {}
    for line in (path / "test" / "attraction.tsv").read_text().splitlines():
        iid, values = line.split("\t")
        attraction[iid] = np.asarray(values.split(), np.float32)
    split = nd.ImpressionSplit.from_behaviors(test, int(cfg.data.max_history))
    mask = split.candidates > 0
    scores = np.full(split.labels.shape, -1e9, np.float32)
    for i, iid in enumerate(test.impression_id):
        scores[i, :len(attraction[iid])] = attraction[iid]
    batch = {"label": split.labels, "candidate_mask": mask}
    return {k: evaluate_arrays(m, {"scores": scores}, batch, batch_size=256)
            for k, m in nf.news_metrics().items()}


def run_seed(seed: int, extra: list[str], workdir: str) -> list[dict]:
    from mlsd_jax.experiment import run

    overrides = ["+task=news_feed", f"seed={seed}", f"data.simulator.seed={seed}",
                 "trainer.progress=false", "export.enabled=false", *extra]
    cfg = _compose(overrides)
    t = time.perf_counter()
    results = run(cfg, workdir=workdir)
    fit_s = time.perf_counter() - t
    m, data = results["metrics"], results["data"]
    rows = [{"model": "NRMS", "seed": seed, "fit_s": fit_s, "best_step": results["best_step"],
             **{f"test_{k}": m[f"test/{k}"] for k in METRICS}, "valid_auc": m["valid/auc"]}]
    for name, values in data["baselines"].items():
        rows.append({"model": name, "seed": seed,
                     **{f"test_{k}": values[f"test/{k}"] for k in METRICS},
                     "valid_auc": values["valid/auc"]})
    oracle = oracle_metrics(cfg)
    rows.append({"model": "simulator oracle (not a model)", "seed": seed,
                 **{f"test_{k}": oracle[k] for k in METRICS}, "valid_auc": float("nan")})
    facts = {k: data[k] for k in ("train_impressions", "valid_impressions", "test_impressions",
                                  "train_users", "valid_users", "test_users", "news",
                                  "vocab_size", "test_oov_word_rate")}
    for r in rows:
        r["data"] = facts
    return rows


def summarise(rows):
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r["model"], []).append(r)
    table = []
    for model, rs in groups.items():
        agg = {"model": model, "seeds": [r["seed"] for r in rs]}
        for k in [f"test_{m}" for m in METRICS] + ["valid_auc", "fit_s"]:
            v = np.array([r.get(k, np.nan) for r in rs], np.float64)
            agg[k] = float(np.mean(v))
            agg[k + "_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        table.append(agg)
    return table


def markdown(summary, meta) -> str:
    lines = ["# News feed quality: NRMS vs popularity and recency (SIMULATED clicks)", "",
             "Clicks, users and impressions are **simulated** (a seeded user model with topic "
             "preferences, position bias and recency) over the real News Articles corpus "
             "(3,824 articles, 9 outlets, Dec 2016 - Mar 2017). Held-out test users, their "
             "impressions after the training period; per-impression metrics as MIND reports "
             "them, all rows scored by the same code.", "",
             f"Seeds {meta['seeds']} (each seed simulates its own log and seeds the model); "
             f"{meta['machine']}. Impressions (seed {meta['seeds'][0]}): "
             f"{meta['impressions']}.", "",
             "| model | test AUC | MRR | nDCG@5 | nDCG@10 | valid AUC | fit s |",
             "|---|---|---|---|---|---|---|"]
    for r in summary:
        fit = f"{r['fit_s']:.0f}" if np.isfinite(r["fit_s"]) else "-"
        valid = f"{r['valid_auc']:.4f}" if np.isfinite(r["valid_auc"]) else "-"
        lines.append(
            f"| {r['model']} | {r['test_auc']:.4f} ± {r['test_auc_std']:.4f} | "
            f"{r['test_mrr']:.4f} ± {r['test_mrr_std']:.4f} | {r['test_ndcg@5']:.4f} | "
            f"{r['test_ndcg@10']:.4f} ± {r['test_ndcg@10_std']:.4f} | {valid} | {fit} |")
    m = MIND_SMALL_NRMS
    lines += ["", "± is the standard deviation over seeds. The oracle row scores each shown "
              "article by the simulator's own P(click | examined): the most any model of these "
              "clicks could reach (the position effect is noise to every scorer).", "",
              f"What the metrics look like on real MIND (MIND-small, NRMS, published; another "
              f"dataset, not comparable): AUC {m['auc']}, MRR {m['mrr']}, nDCG@5 {m['ndcg@5']}, "
              f"nDCG@10 {m['ndcg@10']}.", "",
              "Command: `python benchmarks/news_feed_quality.py " + " ".join(meta["argv"]) + "`"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="one seed, debug-sized model and steps")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    extra = ["debug=fast"] if args.quick else []
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as d:
            rows.extend(run_seed(seed, extra, d))
        print(json.dumps(rows[-4:], default=float), flush=True)
    summary = summarise(rows)
    meta = {"seeds": seeds, "quick": args.quick, "argv": argv if argv is not None else sys.argv[1:],
            "machine": f"{platform.machine()} {os.cpu_count()} cores, load "
                       f"{os.getloadavg()[0]:.1f}",
            "impressions": {k: rows[0]["data"][f"{k}_impressions"]
                            for k in ("train", "valid", "test")},
            "clicks": "simulated", "mind_small_nrms_published": MIND_SMALL_NRMS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "news_feed_quality_quick" if args.quick else "news_feed_quality"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                 indent=2, default=float))
    (out / f"{stem}.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
