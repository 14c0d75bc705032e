"""Recommendation quality on MovieLens-100k: our models, the popularity baseline and RecBole's
published figures, each protocol in its own table.

Every arm runs `+task=recommendation` through `mlsd_jax.experiment.run` (early stopping on the
protocol's validation MRR@10, test scored once on the state validation chose), over several
seeds; seed `s` sets the model seed and the random split's seed (`seed=s data.seed=s`):

* RecBole full ranking (random 8:1:1 per user, every item ranked, known items masked):
  popularity, BPR-MF (RecBole's BPR setup), NeuMF, the two-tower model and MF trained with the
  full softmax over the catalogue and weight decay (`recommendation/model=mf_softmax`, tuned on
  validation MRR@10), with RecBole's BPR figures beside;
* NCF protocol (time-ordered leave-one-out, 99 fixed sampled negatives): the same arms, each
  trained on the leave-one-out split (the runs' `loo` companions);
* sequential protocol (time-ordered leave-last-out, full ranking, history masked): SASRec with
  popularity and BPR-MF trained on the same split; RecBole's GRU4Rec figure as a reference only
  (RecBole does not mask the history there).

    python benchmarks/recommendation_quality.py --seeds 0 1 2
    python benchmarks/recommendation_quality.py --quick      # under a minute: a smoke run

`--arms LABEL ...` runs only the arms with those labels; with `--merge` their rows replace the
same arms' rows (same seeds) in the existing results JSON, the other rows are kept as measured,
and the markdown is regenerated from the merged rows (it lists every command that produced
them).

    python benchmarks/recommendation_quality.py --seeds 0 1 2 --arms "MF softmax" --merge
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

# (label, data option, model option, extra overrides, companions)
ARMS = [
    ("BPR-MF", "full", "mf", [], ["loo"]),
    ("NeuMF", "full", "neumf", [], ["loo"]),
    ("two-tower", "full", "two_tower", [], ["loo"]),
    ("MF softmax", "full", "mf_softmax", [], ["loo"]),
    ("SASRec", "seq", "sasrec", [], []),
    ("BPR-MF", "seq", "mf", [], []),
]
QUICK_ARMS = [
    ("BPR-MF", "full", "mf", ["trainer.max_steps=120"], []),
    ("SASRec", "seq", "sasrec", ["debug=fast"], []),
]
PROTOCOL_NAMES = {"full": "RecBole full ranking (RS 8:1:1 per user, all items ranked)",
                  "loo99": "NCF protocol (time-ordered leave-one-out, 99 sampled negatives)",
                  "seq": "Sequential (time-ordered leave-last-out, all items ranked, history "
                         "masked)"}
COLUMNS = {"full": ["recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"],
           "loo99": ["hr@10", "ndcg@10", "mrr@10"], "seq": ["hit@10", "ndcg@10", "mrr@10"]}


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def run_arm(label, data, model, extra, companions, seed, workdir):
    """One run; returns a row per (protocol, arm) it measured, popularity included."""
    from mlsd_jax.experiment import run

    overrides = ["+task=recommendation", f"recommendation/data={data}",
                 f"recommendation/model={model}", f"seed={seed}", f"data.seed={seed}",
                 f"task.companions=[{','.join(companions)}]", "export.enabled=false",
                 "trainer.progress=false", *extra]
    t = time.perf_counter()
    results = run(_compose(overrides), workdir=workdir)
    wall = time.perf_counter() - t
    m = results["metrics"]
    rows = []
    for protocol in sorted({k.split("/")[1] for k in m}):
        for arm, prefix in ((label, ""), ("popularity", "popularity/")):
            values = {f"{split}/{name}": m[f"{split}/{protocol}/{prefix}{name}"]
                      for split in ("valid", "test") for name in COLUMNS[protocol]}
            rows.append({"protocol": protocol, "model": arm, "seed": seed, **values,
                         "run": f"{data}/{model}", "wall_s": wall if not prefix else 0.0,
                         "best_step": results["best_step"] if not prefix else None})
    return rows


def summarise(rows):
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["protocol"], r["model"], r["run"]), []).append(r)
    out = []
    for (protocol, model, run_name), rs in groups.items():
        if model == "popularity" and any(o["protocol"] == protocol and o["model"] == "popularity"
                                         for o in out):
            continue  # the same baseline on the same splits, scored by every run
        agg = {"protocol": protocol, "model": model, "run": run_name,
               "seeds": [r["seed"] for r in rs]}
        for key in [k for k in rs[0] if k.startswith(("valid/", "test/"))] + ["wall_s"]:
            v = np.array([r[key] for r in rs], np.float64)
            agg[key] = float(v.mean())
            agg[key + "_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(agg)
    order = {"popularity": 0}
    return sorted(out, key=lambda a: (a["protocol"], order.get(a["model"], 1)))


def markdown(summary, meta) -> str:
    from mlsd_jax.tasks.recommendation import REFERENCES

    lines = ["# Recommendation quality: MovieLens-100k", "",
             f"Seeds {meta['seeds']} (model seed and random-split seed); "
             + ("machines as listed under the commands below" if meta.get("commands")
                else meta["machine"]) + ". "
             "Test metrics, mean ± standard deviation over seeds; valid MRR@10 is what early "
             "stopping read. Every number in a table comes from the same evaluator on the same "
             "splits.", ""]
    for protocol in ("full", "loo99", "seq"):
        rows = [r for r in summary if r["protocol"] == protocol]
        if not rows:
            continue
        cols = COLUMNS[protocol]
        header = " | ".join(f"test {c}" for c in cols)
        lines += [f"## {PROTOCOL_NAMES[protocol]}", "",
                  f"| model | {header} | valid mrr@10 | s/run |",
                  "|---|" + "---|" * (len(cols) + 2)]
        for r in rows:
            cells = [f"{r[f'test/{c}']:.4f} ± {r[f'test/{c}_sd']:.4f}" for c in cols]
            wall = f"{r['wall_s']:.0f}" if r["wall_s"] else "-"
            lines.append(f"| {r['model']} | " + " | ".join(cells) +
                         f" | {r['valid/mrr@10']:.4f} | {wall} |")
        ref = REFERENCES.get(protocol)
        if ref:
            for name, figures in ref.items():
                if name == "source":
                    continue
                cells = [f"{figures[c]:.4f}" if c in figures else "-" for c in cols]
                lines.append(f"| RecBole {name} (published) | " + " | ".join(cells) + " | - | - |")
            lines += ["", f"Published figures: {ref['source']}."]
        lines.append("")
    lines += ["Popularity ranks by training-split counts. s/run: wall time of the run that "
              "trained the model (a full-protocol run includes its leave-one-out companion). "
              "SASRec and BPR-MF in the sequential table are trained on the leave-last-out "
              "split (BPR-MF from user ids, SASRec from the history).",
              ""]
    commands = meta.get("commands")
    if not commands:
        lines.append("Command: `python benchmarks/recommendation_quality.py " +
                     " ".join(meta["argv"]) + "`")
    else:
        lines.append("Commands (later ones replaced the rows of the arms they reran, the "
                     "others are as the earlier ones measured them):")
        lines.append("")
        for c in commands:
            lines.append("- `python benchmarks/recommendation_quality.py " +
                         " ".join(_quote(a) for a in c["argv"]) + f"` ({c['machine']})")
    return "\n".join(lines) + "\n"


def select_arms(arms, labels):
    """The arms whose label is in ``labels`` (every arm when ``labels`` is None)."""
    if labels is None:
        return list(arms)
    known = sorted({a[0] for a in arms})
    unknown = sorted(set(labels) - set(known))
    if unknown:
        raise SystemExit(f"--arms: unknown label(s) {unknown}; valid: {known}")
    return [a for a in arms if a[0] in labels]


def merge_rows(old_rows, new_rows):
    """``old_rows`` without the (arm label, run, seed) triples that ``new_rows`` measured again,
    plus ``new_rows``. A popularity row is kept once per (protocol, seed): the baseline is the
    same on the same split whichever run scored it."""
    fresh = {(r["model"], r["run"], r["seed"]) for r in new_rows if r["model"] != "popularity"}
    kept = [r for r in old_rows if (r["model"], r["run"], r["seed"]) not in fresh]
    have = {(r["protocol"], r["seed"]) for r in kept if r["model"] == "popularity"}
    return kept + [r for r in new_rows
                   if r["model"] != "popularity" or (r["protocol"], r["seed"]) not in have]


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true",
                    help="one seed, BPR-MF for 120 steps and a tiny SASRec (a smoke run)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--arms", nargs="+", default=None, metavar="LABEL",
                    help="run only the arms with these labels (default: every arm)")
    ap.add_argument("--merge", action="store_true",
                    help="merge the new rows into the existing results JSON (replacing the "
                         "rerun arms' rows) and regenerate the markdown from all rows")
    args = ap.parse_args(argv if argv is not None else sys.argv[1:])
    from mlsd_jax.utils.xla_flags import configure_jax

    configure_jax()
    seeds = args.seeds[:1] if args.quick else args.seeds
    arms = select_arms(QUICK_ARMS if args.quick else ARMS, args.arms)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for i, (label, data, model, extra, companions) in enumerate(arms):
                print(f"[recommendation_quality] seed {seed}: {label} ({data})", flush=True)
                rows += run_arm(label, data, model, extra, companions, seed,
                                Path(tmp) / f"s{seed}_{i}")
    import jax

    argv_now = list(argv if argv is not None else sys.argv[1:])
    meta = {"seeds": seeds, "argv": argv_now,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, load "
                       f"{os.getloadavg()[0]:.1f}, jax {jax.__version__} "
                       f"({jax.default_backend()})",
            "total_s": time.perf_counter() - t0}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "recommendation_quality_quick" if args.quick else "recommendation_quality"
    if args.merge:
        path = out / f"{stem}.json"
        if not path.exists():
            raise SystemExit(f"--merge: no results to merge into at {path}")
        old = json.loads(path.read_text())
        rows = merge_rows(old["runs"], rows)
        earlier = old["meta"].get("commands") or [{k: old["meta"][k] for k in
                                                   ("seeds", "argv", "machine", "total_s")}]
        meta = {**meta, "seeds": sorted({r["seed"] for r in rows}),
                "commands": earlier + [dict(meta)]}
    summary = summarise(rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                 indent=2))
    (out / f"{stem}.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
