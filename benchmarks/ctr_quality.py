"""CTR quality on the MovieLens click split: our five models against two peers, same rows.

Data: MovieLens-100k, click = rating >= 4, global time-ordered split (the latest 20% of
impressions are test, the 10% before them validation, the rest train), the split
`+task=ctr` uses. Peers, tuned on validation ROC-AUC only:
  * scikit-learn LogisticRegression on one-hot fields (user, item, gender, occupation, zip
    prefix, age, release year) + multi-hot genres, C from a small grid;
  * LightGBM with native categorical features (user, item, gender, occupation, zip prefix),
    age, year and multi-hot genres; learning rate and leaves from a small grid, trees by early
    stopping on validation.
Ours: `python -m experiments.run +task=ctr ctr/model=<m>` (early stopping and the best
checkpoint on validation AUC); its exported bundle then scores the raw validation and test rows,
so the figures are those of the served model. Every arm is scored by the same code: ROC-AUC and
log-loss (scikit-learn), calibration by decile of predicted CTR with its ECE and the
predicted/observed ratio (mlsd_jax.metrics.calibration). Seeds change model initialisation and
batch order (the split is fixed); mean ± standard deviation over seeds.

    python benchmarks/ctr_quality.py --seeds 0 1 2
    python benchmarks/ctr_quality.py --quick          # under a minute: a smoke run
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

MODELS = ("lr", "fm", "deepfm", "wide_deep", "dcn_v2")
NAMES = {"lr": "ours: LR", "fm": "ours: FM", "deepfm": "ours: DeepFM",
         "wide_deep": "ours: Wide & Deep", "dcn_v2": "ours: DCN-v2"}


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def load_split(cfg):
    from mlsd_jax.data.ctr import time_split
    from mlsd_jax.tasks.ctr import load_clicks

    log = load_clicks(cfg.data)
    parts = time_split(log.timestamp, float(cfg.data.valid_fraction),
                       float(cfg.data.test_fraction))
    return log, parts


def calibration(y, p) -> dict:
    from mlsd_jax.metrics.calibration import CalibrationByDecile
    from mlsd_jax.metrics.streaming import evaluate_arrays

    metric = CalibrationByDecile(pred="prob", label="label")
    return evaluate_arrays(metric, {"prob": p.astype(np.float32)},
                           {"label": y.astype(np.float32)}, batch_size=8192)


def scores(y_valid, p_valid, y_test, p_test) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    cal = calibration(y_test, p_test)
    return {"valid_auc": float(roc_auc_score(y_valid, p_valid)),
            "test_auc": float(roc_auc_score(y_test, p_test)),
            "test_logloss": float(log_loss(y_test, np.clip(p_test, 1e-7, 1 - 1e-7))),
            "test_ece": cal["ece"], "test_ratio": cal["ratio"],
            "test_deciles": [[cal[f"d{k}_pred"], cal[f"d{k}_obs"]] for k in range(1, 11)]}


def peer_design(cfg, log, parts):
    """One-hot (LR) and categorical-code (LightGBM) designs fitted on the training rows."""
    from scipy import sparse
    from sklearn.preprocessing import MultiLabelBinarizer, OneHotEncoder, OrdinalEncoder

    from mlsd_jax.data.ctr import zip_prefix_np

    c = log.columns
    prefix = int(cfg.data.prefix.get("zip_code", 3))
    cats = np.stack([np.asarray([str(v) for v in c[k]], object)
                     for k in ("user_id", "item_id", "gender", "occupation")]
                    + [zip_prefix_np(c["zip_code"], prefix)], 1)
    nums = np.stack([c["age"], c["year"]], 1).astype(np.float64)
    num_text = np.asarray([[str(v) for v in row] for row in nums], object)
    genres = [[g for g in s.split("|") if g] for s in c["genres"]]
    tr = parts["train"]
    mlb = MultiLabelBinarizer().fit([genres[i] for i in tr])
    with np.errstate(all="ignore"):
        multi = sparse.csr_matrix(mlb.transform(genres).astype(np.float64))
    onehot = OneHotEncoder(handle_unknown="ignore").fit(np.concatenate([cats, num_text], 1)[tr])
    lr_x = sparse.hstack([onehot.transform(np.concatenate([cats, num_text], 1)), multi]).tocsr()
    ordinal = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1).fit(cats[tr])
    codes = ordinal.transform(cats)
    codes[codes < 0] = np.nan
    gbm_x = np.concatenate([codes, nums, multi.toarray()], 1)
    return lr_x, gbm_x, cats.shape[1]


def run_logistic(x, y, parts, grid, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    t, best = time.perf_counter(), None
    for C in grid:
        m = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit(x[parts["train"]],
                                                                         y[parts["train"]])
        auc = roc_auc_score(y[parts["valid"]], m.predict_proba(x[parts["valid"]])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, C, m)
    _, C, m = best
    p = {s: m.predict_proba(x[parts[s]])[:, 1] for s in ("valid", "test")}
    return {"model": "LogisticRegression (one-hot)", "seed": seed, "chosen": {"C": C},
            "fit_s": time.perf_counter() - t,
            **scores(y[parts["valid"]], p["valid"], y[parts["test"]], p["test"])}


def run_lightgbm(x, y, parts, n_cat, grid, seed, max_trees):
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score

    t, best = time.perf_counter(), None
    for params in grid:
        m = lgb.LGBMClassifier(n_estimators=max_trees, random_state=seed, verbose=-1, **params)
        m.fit(x[parts["train"]], y[parts["train"]], categorical_feature=list(range(n_cat)),
              eval_set=[(x[parts["valid"]], y[parts["valid"]])], eval_metric="auc",
              callbacks=[lgb.early_stopping(50, verbose=False)])
        auc = roc_auc_score(y[parts["valid"]], m.predict_proba(x[parts["valid"]])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, {**params, "trees": int(m.best_iteration_ or max_trees)}, m)
    _, chosen, m = best
    p = {s: m.predict_proba(x[parts[s]])[:, 1] for s in ("valid", "test")}
    return {"model": "LightGBM (categorical)", "seed": seed, "chosen": chosen,
            "fit_s": time.perf_counter() - t,
            **scores(y[parts["valid"]], p["valid"], y[parts["test"]], p["test"])}


def run_ours(model, extra, log, parts, seed, workdir):
    from mlsd_jax.experiment import run
    from mlsd_jax.export import load_bundle
    from mlsd_jax.tasks.base import serving_name

    cfg = _compose(["+task=ctr", f"ctr/model={model}", f"seed={seed}", "trainer.progress=false",
                    "export.check=false", *extra])
    t = time.perf_counter()
    results = run(cfg, workdir=workdir)
    fit_s = time.perf_counter() - t
    bundle = load_bundle(results["paths"]["export"])
    prob = {s: bundle.predict({serving_name(k): v[parts[s]]
                               for k, v in log.columns.items()})["prob"]
            for s in ("valid", "test")}
    y = log.label
    return {"model": NAMES[model], "seed": seed,
            "chosen": {"best_step": results["best_step"], "steps": results["steps_run"]},
            "fit_s": fit_s, "task_test_auc": results["metrics"].get("test/auc"),
            **scores(y[parts["valid"]], prob["valid"], y[parts["test"]], prob["test"])}


def summarise(rows):
    by_model: dict = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    table = []
    for model, rs in by_model.items():
        agg = {"model": model, "seeds": [r["seed"] for r in rs]}
        for k in ("test_auc", "test_logloss", "test_ece", "test_ratio", "valid_auc", "fit_s"):
            v = np.array([r[k] for r in rs], np.float64)
            agg[k] = float(v.mean())
            agg[k + "_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        agg["test_deciles"] = np.mean([r["test_deciles"] for r in rs], axis=0).tolist()
        table.append(agg)
    return table


def markdown(summary, meta) -> str:
    lines = [f"# CTR quality: {meta['dataset']} ({meta['split']})", "",
             f"Impressions: train {meta['train_rows']}, valid {meta['valid_rows']}, test "
             f"{meta['test_rows']} (cold users: {meta['test_cold_user_rate']:.0%} of test rows); "
             f"click rate {meta['positive_rate']:.3f}; seeds {meta['seeds']}; {meta['machine']}.",
             "", "| model | test ROC-AUC | log-loss | ECE (deciles) | pred/obs CTR | valid AUC "
             "| fit s |", "|---|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(
            f"| {r['model']} | {r['test_auc']:.4f} ± {r['test_auc_std']:.4f} | "
            f"{r['test_logloss']:.4f} | {r['test_ece']:.4f} | {r['test_ratio']:.3f} | "
            f"{r['valid_auc']:.4f} | {r['fit_s']:.1f} |")
    ranked = sorted(summary, key=lambda r: -r["valid_auc"])
    lines += ["", "By validation AUC (what selects): " + " > ".join(
        f"{r['model']} {r['valid_auc']:.4f}" for r in ranked) + "."]
    lines += ["", "± is the standard deviation over seeds (initialisation and batch order; the "
              "split is fixed). ECE over equal-weight deciles of predicted CTR; pred/obs is the "
              "mean predicted over the observed click rate. Calibration by decile (test, mean "
              "over seeds) is plotted in the .png.",
              "Command: `python benchmarks/ctr_quality.py " + " ".join(meta["argv"]) + "`"]
    return "\n".join(lines) + "\n"


def plot(summary, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5))
    lo, hi = 1.0, 0.0
    for r in summary:
        d = np.asarray(r["test_deciles"], np.float64)
        ax.plot(d[:, 0], d[:, 1], marker="o", ms=3, label=f"{r['model']} (ECE {r['test_ece']:.3f})")
        lo, hi = min(lo, np.nanmin(d)), max(hi, np.nanmax(d))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect calibration")
    ax.set_xlabel("mean predicted CTR (decile of predictions)")
    ax.set_ylabel("observed click rate")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true",
                    help="one seed, Wide & Deep on the debug overlay, one peer setting each")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    models = ["wide_deep"] if args.quick else args.models
    extra = ["debug=fast"] if args.quick else []
    cfg = _compose(["+task=ctr"])
    log, parts = load_split(cfg)
    lr_x, gbm_x, n_cat = peer_design(cfg, log, parts)
    lr_grid = [1.0] if args.quick else [0.03, 0.1, 0.3, 1.0, 3.0]
    gbm_grid = ([{"learning_rate": 0.1, "num_leaves": 15}] if args.quick else
                [{"learning_rate": lr, "num_leaves": leaves, "min_child_samples": mcs}
                 for lr in (0.03, 0.1) for leaves in (15, 63) for mcs in (20, 100)])
    max_trees = 20 if args.quick else 3000
    rows = []
    for seed in seeds:
        rows.append(run_logistic(lr_x, log.label, parts, lr_grid, seed))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "test_deciles"}), flush=True)
        rows.append(run_lightgbm(gbm_x, log.label, parts, n_cat, gbm_grid, seed, max_trees))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "test_deciles"}), flush=True)
        for model in models:
            with tempfile.TemporaryDirectory() as d:
                rows.append(run_ours(model, extra, log, parts, seed, d))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "test_deciles"}),
                  flush=True)
    summary = summarise(rows)
    from mlsd_jax.data.ctr import describe_split

    facts = describe_split(log, parts)
    meta = {"dataset": "MovieLens-100k clicks (rating >= 4)",
            "split": f"global time order, valid {cfg.data.valid_fraction:.0%} / test "
                     f"{cfg.data.test_fraction:.0%} latest",
            **{f"{k}_rows": int(len(v)) for k, v in parts.items()},
            "test_cold_user_rate": facts.get("test_cold_user_rate", float("nan")),
            "positive_rate": float(log.label.mean()), "seeds": seeds,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, load "
                       f"{os.getloadavg()[0]:.1f}",
            "argv": argv if argv is not None else sys.argv[1:], "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ctr_quality_quick" if args.quick else "ctr_quality"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                 indent=2))
    (out / f"{stem}.md").write_text(markdown(summary, meta))
    plot(summary, out / f"{stem}.png", "Calibration by decile, MovieLens-100k clicks, test split")
    print(markdown(summary, meta))


if __name__ == "__main__":
    main()
