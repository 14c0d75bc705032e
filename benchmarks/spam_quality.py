"""Spam quality: our `+task=spam` model against scikit-learn's peers on the same splits.

Peers (what a user would otherwise pick), tuned on the validation split like ours:
  * TF-IDF of word 1-2-grams + character 2-5-grams inside word boundaries (``char_wb``),
    sublinear TF, each L2-normalised, then LogisticRegression, C chosen on validation PR-AUC;
  * the same features with LinearSVC, C chosen on validation PR-AUC (decision values are not
    probabilities: its log-loss and ECE are not reported).
Peers read the raw text (for e-mail: subject, a newline, the body text); ours also reads the
e-mail's header features. Every arm gets the same data split (``data.seed``), the same
threshold rule (the lowest threshold whose validation precision reaches the precision target,
:func:`mlsd_jax.tasks.spam.choose_threshold`) and the same metric code
(:func:`mlsd_jax.tasks.spam.report`); the test split chooses nothing. Ours runs through
`mlsd_jax.experiment.run` (early stopping on validation PR-AUC) and reports its test metrics.

    python benchmarks/spam_quality.py --seeds 0 1 2                 # both datasets, 3 seeds
    python benchmarks/spam_quality.py --data sms --seeds 0 --peers-only   # the test's bar
    python benchmarks/spam_quality.py --quick                       # seconds: a smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR_C = (1.0, 3.0, 10.0, 30.0, 100.0)
SVC_C = (0.03, 0.1, 0.3, 1.0, 3.0)
REPORTED = ("f1", "precision", "recall", "auc", "pr_auc", "logloss", "ece", "f1@0.5",
            "ham_fpr", "hard_ham_fpr")


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def peer_texts(data) -> np.ndarray:
    """What the peers read: the text, or for e-mail the subject, a newline and the body."""
    if "subject" in data.columns:
        return np.asarray([f"{s}\n{t}" for s, t in zip(data.columns["subject"],
                                                        data.columns["text"])], object)
    return np.asarray(data.columns["text"], object)


def _vectorize(texts, parts, quick: bool):
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer

    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5) if not quick else (3, 4),
                           sublinear_tf=True, lowercase=True)
    train = list(texts[parts["train"]])
    word.fit(train)
    char.fit(train)
    return {s: hstack([word.transform(list(texts[r])), char.transform(list(texts[r]))]).tocsr()
            for s, r in parts.items()}


def sklearn_peers(data, precision_target: float, seed: int, quick: bool = False) -> dict:
    """Each peer's ``report`` on valid and test (C tuned on validation PR-AUC)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.svm import LinearSVC

    from mlsd_jax.tasks.spam import choose_threshold, report, threshold_report

    parts = {s: data.splits[s] for s in ("train", "valid", "test")}
    t0 = time.perf_counter()
    X = _vectorize(peer_texts(data), parts, quick)
    y = {s: data.labels[r] for s, r in parts.items()}
    hard = {s: data.hard_ham[r] for s, r in parts.items()}
    out = {}
    arms = {"sklearn_tfidf_logreg": (lambda c: LogisticRegression(C=c, max_iter=2000), LR_C),
            "sklearn_tfidf_linearsvc": (lambda c: LinearSVC(C=c, random_state=seed), SVC_C)}
    for name, (make, grid) in arms.items():
        t = time.perf_counter()
        grid = grid[1:3] if quick else grid
        best = None
        for c in grid:
            clf = make(c).fit(X["train"], y["train"])
            ap = average_precision_score(y["valid"], _score(clf, X["valid"]))
            if best is None or ap > best[0]:
                best = (ap, c, clf)
        _, c, clf = best
        sv, st = _score(clf, X["valid"]), _score(clf, X["test"])
        threshold, met = choose_threshold(sv, y["valid"], precision_target)
        row = {"C": c, "fit_s": time.perf_counter() - t}
        for split, s in (("valid", sv), ("test", st)):
            if name.endswith("logreg"):
                r = report(s, y[split], threshold, met, hard[split])
            else:  # decision values: threshold metrics and ranking metrics only
                r = report(1.0 / (1.0 + np.exp(-s)), y[split], 1.0 / (1.0 + np.exp(-threshold)),
                           met, hard[split])
                r.update(threshold_report(s, y[split], threshold, hard[split]))
                r["f1@0.5"] = threshold_report(s, y[split], 0.0)["f1"]
                r["logloss"] = r["ece"] = float("nan")
                r["threshold"] = threshold
            row.update({f"{split}/{k}": v for k, v in r.items()})
        out[name] = row
    out["_vectorize_s"] = time.perf_counter() - t0
    return out


def _score(clf, X):
    return clf.predict_proba(X)[:, 1] if hasattr(clf, "predict_proba") else clf.decision_function(X)


def ours(dataset: str, seed: int, quick: bool, workdir: Path) -> dict:
    from mlsd_jax.experiment import run

    overrides = ["+task=spam", f"spam/data={dataset}", f"data.seed={seed}", f"seed={seed}",
                 "export.enabled=false", "trainer.progress=false"]
    if quick:
        overrides += ["debug=fast", "trainer.max_steps=20", "trainer.eval_every=10"]
    t = time.perf_counter()
    results = run(_compose(overrides), workdir=workdir)
    row = {k: v for k, v in results["metrics"].items()}
    row.update(fit_s=time.perf_counter() - t, best_step=results["best_step"],
               steps_run=results["steps_run"])
    return row


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["dataset"], r["model"]) for r in rows})
    for dataset, model in keys:
        mine = [r for r in rows if r["dataset"] == dataset and r["model"] == model]
        s = {"dataset": dataset, "model": model, "seeds": [r["seed"] for r in mine]}
        for k in REPORTED:
            vals = [r.get(f"test/{k}") for r in mine]
            vals = [v for v in vals if v is not None and not np.isnan(v)]
            if vals:
                s[f"test/{k}"] = float(np.mean(vals))
                s[f"test/{k}_std"] = float(np.std(vals))
        out.append(s)
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    lines = ["# Spam quality: `+task=spam` vs scikit-learn TF-IDF peers", "",
             f"Command: `{meta['command']}`  ",
             f"Seeds (data split and training): {meta['seeds']}; precision target "
             f"{meta['precision_target']} (threshold chosen on validation, applied to test); "
             f"{meta['host']}.", "",
             "Mean ± std over seeds of the **test** split. F1 / precision / recall / ham FPR at "
             "the validation threshold; `f1@0.5` at 0.5 (LinearSVC: decision value 0).", ""]
    cols = [k for k in REPORTED if any(f"test/{k}" in s for s in summary)]
    lines.append("| dataset | model | " + " | ".join(cols) + " |")
    lines.append("|---|---|" + "---|" * len(cols))
    for s in summary:
        cells = []
        for k in cols:
            v = s.get(f"test/{k}")
            cells.append("–" if v is None else f"{v:.4f} ± {s[f'test/{k}_std']:.4f}")
        lines.append(f"| {s['dataset']} | {s['model']} | " + " | ".join(cells) + " |")
    lines += ["", "Data: " + "; ".join(meta["credits"]) + ".",
              "Splits: exact duplicates dropped, near duplicates kept on one side, seeded "
              "stratified train 70% / valid 10% / test 20%. SpamAssassin `hard_ham_fpr`: the "
              "share of hard ham (legitimate mail that looks like spam) flagged as spam."]
    if not meta.get("complete", True):
        lines += ["", "**Partial**: the run was interrupted; only the rows above were measured."]
    if meta.get("quick"):
        lines += ["", "**Quick mode** (smoke run: tiny model, few steps, small peer grids); "
                  "not a measurement."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", default=["sms", "spamassassin"],
                    choices=["sms", "spamassassin"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--precision-target", type=float, default=0.99)
    ap.add_argument("--peers-only", action="store_true", help="skip our model")
    ap.add_argument("--quick", action="store_true", help="smoke run: SMS, one seed, tiny runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.data, args.seeds = ["sms"], args.seeds[:1]

    from mlsd_jax.tasks.spam import load_data

    rows = []
    for dataset in args.data:
        for seed in args.seeds:
            cfg = _compose(["+task=spam", f"spam/data={dataset}", f"data.seed={seed}"])
            data = load_data(cfg.data)
            for name, row in sklearn_peers(data, args.precision_target, seed, args.quick).items():
                if not name.startswith("_"):
                    rows.append({"dataset": dataset, "seed": seed, "model": name, **row})
                    print(dataset, seed, name, {k: round(v, 4) for k, v in row.items()
                                                if k.startswith("test/")}, flush=True)
            if not args.peers_only:
                with tempfile.TemporaryDirectory() as tmp:
                    row = ours(dataset, seed, args.quick, Path(tmp))
                rows.append({"dataset": dataset, "seed": seed, "model": "ours_tfidf_logreg_jax",
                             **row})
                print(dataset, seed, "ours", {k: round(v, 4) for k, v in row.items()
                                              if k.startswith("test/")}, flush=True)
            write(args, argv, rows, partial=True)  # what is done survives an interrupted run
    print(write(args, argv, rows, partial=False))
    return 0


def write(args, argv, rows: list[dict], partial: bool) -> str:
    """Writes the JSON and markdown results; returns the markdown."""
    import jax
    import sklearn

    from mlsd_jax.tasks.spam import SMS_CREDIT, SPAMASSASSIN_CREDIT

    summary = summarize(rows)
    meta = {"command": "python benchmarks/spam_quality.py " + " ".join(argv if argv is not None
                                                                     else sys.argv[1:]),
            "seeds": args.seeds, "precision_target": args.precision_target, "quick": args.quick,
            "host": f"{platform.processor() or platform.machine()}, CPU, jax {jax.__version__}, "
                    f"scikit-learn {sklearn.__version__}",
            "credits": [c for d, c in (("sms", SMS_CREDIT), ("spamassassin", SPAMASSASSIN_CREDIT))
                        if d in args.data],
            "complete": not partial}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "spam_quality_quick" if args.quick else "spam_quality"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                 indent=2, default=float))
    text = markdown(summary, meta)
    (out / f"{stem}.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
