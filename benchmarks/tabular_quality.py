"""Tabular quality: our `+task=tabular` model against scikit-learn's peers on the same split.

Peers (what a user would otherwise pick), tuned on the validation split like ours:
  * LogisticRegression on one-hot categoricals + standardised (log where configured) numbers,
    C chosen on validation ROC-AUC;
  * HistGradientBoostingClassifier with native categorical features, learning rate and leaf
    count chosen on validation ROC-AUC.
Our model runs through `mlsd_jax.experiment.run` (early stopping on validation AUC), then its
exported bundle scores the validation and test rows from raw columns, so the figures are
those of the served model. Every arm's metrics are computed by the same code (scikit-learn).
The F1 threshold of each arm is the one that maximises its validation F1.

    python benchmarks/tabular_quality.py --seeds 0 1 2
    python benchmarks/tabular_quality.py --quick          # seconds: a smoke run
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


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def ece(y, p, bins: int = 10) -> float:
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(p[sel].mean() - y[sel].mean())
    return float(total)


def scores(y_valid, p_valid, y_test, p_test) -> dict:
    from sklearn.metrics import (average_precision_score, f1_score, log_loss, precision_recall_curve,
                                 roc_auc_score)

    prec, rec, thr = precision_recall_curve(y_valid, p_valid)
    f1s = 2 * prec * rec / np.maximum(prec + rec, 1e-12)
    threshold = float(thr[np.argmax(f1s[:-1])]) if len(thr) else 0.5
    pt = np.clip(p_test, 1e-7, 1 - 1e-7)
    return {"valid_auc": float(roc_auc_score(y_valid, p_valid)),
            "test_auc": float(roc_auc_score(y_test, p_test)),
            "test_pr_auc": float(average_precision_score(y_test, p_test)),
            "test_logloss": float(log_loss(y_test, pt)),
            "test_f1": float(f1_score(y_test, p_test >= threshold)),
            "f1_threshold": threshold, "test_ece": ece(y_test, p_test)}


def load_split(cfg):
    from mlsd_jax.tasks.tabular import _load
    from mlsd_jax.data.tabular import stratified_split

    table, labels, _ = _load(cfg.data)
    parts = stratified_split(labels, {"valid": cfg.data.valid_fraction,
                                      "test": cfg.data.test_fraction}, int(cfg.data.seed))
    return table, labels, parts


def sklearn_design(cfg, table, parts):
    """One-hot + standardised numbers (for LR); ordinal codes (for HGB); fitted on train rows."""
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    cats, nums = list(cfg.data.categorical), list(cfg.data.numeric)
    logged = set(cfg.data.log_numeric)
    cat = np.stack([np.asarray([str(v) for v in table[c]], object) for c in cats], 1)
    num = np.stack([np.log1p(np.abs(table[c].astype(float))) if c in logged
                    else table[c].astype(float) for c in nums], 1)
    tr = parts["train"]
    onehot = OneHotEncoder(handle_unknown="ignore", min_frequency=1).fit(cat[tr])
    scaler = StandardScaler().fit(num[tr])
    from scipy import sparse

    lr_x = sparse.hstack([onehot.transform(cat), sparse.csr_matrix(scaler.transform(num))]).tocsr()
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                             encoded_missing_value=-1).fit(cat[tr])
    codes = ordinal.transform(cat)
    codes[codes < 0] = np.nan
    hgb_x = np.concatenate([codes, num], 1)
    return lr_x, hgb_x, len(cats)


def run_sklearn(name, make, grid, x, y, parts, seed):
    from sklearn.metrics import roc_auc_score

    best = None
    t = time.perf_counter()
    for params in grid:
        model = make(seed=seed, **params).fit(x[parts["train"]], y[parts["train"]])
        auc = roc_auc_score(y[parts["valid"]], model.predict_proba(x[parts["valid"]])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, params, model)
    fit_s = time.perf_counter() - t
    _, params, model = best
    pv = model.predict_proba(x[parts["valid"]])[:, 1]
    pt = model.predict_proba(x[parts["test"]])[:, 1]
    return {"model": name, "seed": seed, "chosen": params, "fit_s": fit_s,
            **scores(y[parts["valid"]], pv, y[parts["test"]], pt)}


def run_ours(overrides, table, labels, parts, seed, workdir):
    from mlsd_jax.experiment import run
    from mlsd_jax.export import load_bundle
    from mlsd_jax.tasks.tabular import serving_inputs

    cfg = _compose(["+task=tabular", f"seed={seed}", "trainer.progress=false", *overrides])
    t = time.perf_counter()
    results = run(cfg, workdir=workdir)
    fit_s = time.perf_counter() - t
    bundle = load_bundle(results["paths"]["export"])
    prob = {}
    for split in ("valid", "test"):
        raw = serving_inputs({k: v[parts[split]] for k, v in table.items()})
        prob[split] = bundle.predict(raw)["prob"]
    return {"model": "ours: " + cfg.model._target_.rsplit(".", 1)[1] +
            (" +BN" if cfg.model.get("batch_norm") else ""), "seed": seed,
            "chosen": {"best_step": results["best_step"]}, "fit_s": fit_s,
            "task_test_auc": results["metrics"].get("test/auc"),
            **scores(labels[parts["valid"]], prob["valid"], labels[parts["test"]], prob["test"])}


def summarise(rows):
    out = {}
    for r in rows:
        out.setdefault(r["model"], []).append(r)
    table = []
    for model, rs in out.items():
        agg = {"model": model, "seeds": [r["seed"] for r in rs]}
        for k in ("test_auc", "test_pr_auc", "test_logloss", "test_f1", "test_ece", "valid_auc",
                  "fit_s"):
            v = np.array([r[k] for r in rs])
            agg[k] = float(v.mean())
            agg[k + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        table.append(agg)
    return table


def markdown(summary, meta) -> str:
    lines = [f"# Tabular quality: UCI Adult ({meta['split']})", "",
             f"Rows: train {meta['train_rows']}, valid {meta['valid_rows']}, test "
             f"{meta['test_rows']}; seeds {meta['seeds']}; {meta['machine']}.", "",
             "| model | test ROC-AUC | PR-AUC | log-loss | F1 (valid thr.) | ECE | valid AUC | fit s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(
            f"| {r['model']} | {r['test_auc']:.4f} ± {r['test_auc_std']:.4f} | "
            f"{r['test_pr_auc']:.4f} | {r['test_logloss']:.4f} | {r['test_f1']:.4f} | "
            f"{r['test_ece']:.4f} | {r['valid_auc']:.4f} | {r['fit_s']:.1f} |")
    lines += ["", "± is the standard deviation over seeds (model seed; the split is fixed).",
              "Command: `python benchmarks/tabular_quality.py " + " ".join(meta["argv"]) + "`"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="one seed, tiny model and grids")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--models", nargs="+", default=["tabular_net", "tabular_net_bn"])
    args = ap.parse_args(argv)
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    seeds = args.seeds[:1] if args.quick else args.seeds
    extra = ["debug=fast", "export.check=false"] if args.quick else []
    cfg = _compose(["+task=tabular"])
    table, labels, parts = load_split(cfg)
    lr_x, hgb_x, n_cat = sklearn_design(cfg, table, parts)
    lr_grid = [{"C": c} for c in ([1.0] if args.quick else [0.01, 0.1, 1.0, 10.0])]
    hgb_grid = ([{"learning_rate": 0.1, "max_leaf_nodes": 31}] if args.quick else
                [{"learning_rate": lr, "max_leaf_nodes": m} for lr in (0.05, 0.1) for m in (15, 31, 63)])
    rows = []
    for seed in seeds:
        rows.append(run_sklearn(
            "LogisticRegression (one-hot)",
            lambda seed, C: LogisticRegression(C=C, max_iter=2000, random_state=seed),
            lr_grid, lr_x, labels, parts, seed))
        rows.append(run_sklearn(
            "HistGradientBoosting (native categorical)",
            lambda seed, **kw: HistGradientBoostingClassifier(
                categorical_features=list(range(n_cat)), max_iter=500, early_stopping=True,
                random_state=seed, **kw),
            hgb_grid, hgb_x, labels, parts, seed))
        for model in args.models[:1] if args.quick else args.models:
            with tempfile.TemporaryDirectory() as d:
                rows.append(run_ours([f"tabular/model={model}", *extra], table, labels, parts,
                                     seed, d))
        print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows)
    meta = {"split": f"seeded stratified, valid {cfg.data.valid_fraction:.0%} / test "
                     f"{cfg.data.test_fraction:.0%}, seed {cfg.data.seed}",
            **{f"{k}_rows": int(len(v)) for k, v in parts.items()}, "seeds": seeds,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
            "argv": argv if argv is not None else sys.argv[1:], "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "tabular_quality_quick" if args.quick else "tabular_quality"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                 indent=2))
    (out / f"{stem}.md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
