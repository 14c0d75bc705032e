"""Content moderation: quality on the insults competition's test file against scikit-learn's
peers, and per-comment latency in process and through the model server.

Quality (every arm on the same split per seed; the seed sets the validation split and our
initialisation; the test file is the competition's ``test_with_solutions.csv`` and chooses
nothing):
  * ours: ``python -m experiments.run +task=moderation`` (early stopping and the allow /
    review / block thresholds on validation);
  * scikit-learn TF-IDF of word 1-2-grams + character 2-5-grams inside word boundaries, sublinear
    TF, then LogisticRegression (C chosen on validation ROC-AUC) and LinearSVC (likewise).
The same decision rule (:func:`mlsd_jax.tasks.moderation.choose_decisions`) and metric code
(:func:`~mlsd_jax.tasks.moderation.report`) score every arm.

Latency (seed 0's exported model; real test comments one at a time, batch 1): the exported
bundle's predict in process (numpy tokeniser + jitted JAX), the SavedModel in TensorFlow
(tokeniser inside the graph), and REST ``:predict`` through ``experiments.serve`` (JAX
execution, prediction log and review queue on).

    python benchmarks/moderation.py --seeds 0 1 2
    python benchmarks/moderation.py --seeds 0 --peers-only      # the quality test's bar
    python benchmarks/moderation.py --quick                     # a smoke run
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

LR_C = (1.0, 2.0, 4.0, 8.0, 16.0)
SVC_C = (0.05, 0.1, 0.2, 0.4, 1.0)
REPORTED = ("auc", "pr_auc", "logloss", "ece", "allow_rate", "review_rate", "block_rate",
            "block_precision", "violating_allowed", "f1@block")


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def sklearn_peers(data, cfg_task, quick: bool) -> dict:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.svm import LinearSVC

    from mlsd_jax.tasks.moderation import choose_decisions, report

    parts = {s: data.splits[s] for s in ("train", "valid", "test")}
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    train = list(data.text[parts["train"]])
    word.fit(train)
    char.fit(train)
    X = {s: hstack([word.transform(list(data.text[r])), char.transform(list(data.text[r]))]
                   ).tocsr() for s, r in parts.items()}
    y = {s: data.labels[r] for s, r in parts.items()}
    out = {}
    arms = {"sklearn_tfidf_logreg": (lambda c: LogisticRegression(C=c, max_iter=3000), LR_C),
            "sklearn_tfidf_linearsvc": (lambda c: LinearSVC(C=c), SVC_C)}
    for name, (make, grid) in arms.items():
        t = time.perf_counter()
        best = None
        for c in (grid[1:3] if quick else grid):
            clf = make(c).fit(X["train"], y["train"])
            auc = roc_auc_score(y["valid"], _score(clf, X["valid"]))
            if best is None or auc > best[0]:
                best = (auc, c, clf)
        _, c, clf = best
        s = {k: _score(clf, X[k]) for k in ("valid", "test")}
        if name.endswith("linearsvc"):  # decision values -> (0, 1) for the shared metric code
            s = {k: 1.0 / (1.0 + np.exp(-v)) for k, v in s.items()}
        d = choose_decisions(s["valid"], y["valid"], float(cfg_task.block_precision),
                             float(cfg_task.review_recall))
        row = {"C": c, "fit_s": time.perf_counter() - t}
        for split in ("valid", "test"):
            r = report(s[split], y[split], d, ("insult",))
            if name.endswith("linearsvc"):
                r["logloss"] = r["ece"] = float("nan")
            row.update({f"{split}/{k}": v for k, v in r.items()})
        out[name] = row
    return out


def _score(clf, X):
    return clf.predict_proba(X)[:, 1] if hasattr(clf, "predict_proba") else clf.decision_function(X)


def ours(seed: int, quick: bool, workdir: Path, export: bool) -> dict:
    from mlsd_jax.experiment import run

    overrides = ["+task=moderation", f"data.seed={seed}", f"seed={seed}",
                 f"export.enabled={str(export).lower()}", "trainer.progress=false"]
    if quick:
        overrides += ["debug=fast", "trainer.max_steps=20", "trainer.eval_every=10"]
    t = time.perf_counter()
    results = run(_compose(overrides), workdir=workdir)
    row = dict(results["metrics"])
    row.update(fit_s=time.perf_counter() - t, best_step=results["best_step"],
               steps_run=results["steps_run"], export=results["paths"]["export"])
    return row


def _percentiles(seconds) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"n": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


def latency(export: str, texts, tmp: Path, warmup: int = 30) -> dict:
    """Batch-1 latency of one comment at a time: in process, SavedModel, REST."""
    import httpx
    import tensorflow as tf

    from mlsd_jax.export import load_bundle
    from mlsd_jax.serving import serve_config, start_server

    out = {}
    bundle = load_bundle(export)
    for t in texts[:warmup]:
        bundle.predict({"text": np.asarray([t], object)})
    times = []
    for t in texts:
        t0 = time.perf_counter()
        bundle.predict({"text": np.asarray([t], object)})
        times.append(time.perf_counter() - t0)
    out["in_process_jax"] = _percentiles(times)

    fn = tf.saved_model.load(export).signatures["serving_default"]
    for t in texts[:warmup]:
        fn(text=tf.constant([t]))
    times = []
    for t in texts:
        t0 = time.perf_counter()
        fn(text=tf.constant([t]))
        times.append(time.perf_counter() - t0)
    out["in_process_savedmodel"] = _percentiles(times)

    cfg = serve_config({"models": [{"name": "moderation", "base_path": str(Path(export).parent)}],
                        "host": "127.0.0.1", "rest_port": 0, "grpc_port": -1,
                        "access_log": False, "compilation_cache": str(tmp / "xla"),
                        "log": {"dir": str(tmp / "predlog")},
                        "review_queue": str(tmp / "review.sqlite")})
    with start_server(cfg) as server, httpx.Client(base_url=server.rest_url, timeout=30) as http:
        url = "/v1/models/moderation:predict"
        for t in texts[:warmup]:
            http.post(url, json={"instances": [t]})
        times, codes = [], []
        for t in texts:
            t0 = time.perf_counter()
            r = http.post(url, json={"instances": [t]})
            times.append(time.perf_counter() - t0)
            codes.append(r.status_code)
    out["rest_server"] = {**_percentiles(times), "non_200": int(sum(c != 200 for c in codes))}
    from mlsd_jax.serving.review import ReviewQueue

    with ReviewQueue(tmp / "review.sqlite") as q:
        out["rest_server"]["review_enqueued"] = q.counts()["pending"]
    return out


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        s = {"model": model, "seeds": [r["seed"] for r in mine]}
        for k in REPORTED:
            vals = [r.get(f"test/{k}") for r in mine]
            vals = [v for v in vals if v is not None and not np.isnan(v)]
            if vals:
                s[f"test/{k}"] = float(np.mean(vals))
                s[f"test/{k}_std"] = float(np.std(vals))
        out.append(s)
    return out


def markdown(summary, lat, meta) -> str:
    lines = ["# Content moderation: `+task=moderation` on the insults test file", "",
             f"Command: `{meta['command']}`  ",
             f"Seeds (validation split and training): {meta['seeds']}; {meta['host']}; load "
             f"average at start {meta['load_at_start']}.", "",
             "Mean ± std over seeds on `test_with_solutions.csv` (2,647 comments). Decisions: "
             f"block above the lowest threshold with validation precision >= "
             f"{meta['block_precision']}, review above the highest with validation recall >= "
             f"{meta['review_recall']}, allow below (both chosen on validation).", ""]
    cols = [k for k in REPORTED if any(f"test/{k}" in s for s in summary)]
    lines.append("| model | " + " | ".join(cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for s in summary:
        cells = ["–" if s.get(f"test/{k}") is None else
                 f"{s[f'test/{k}']:.4f} ± {s[f'test/{k}_std']:.4f}" for k in cols]
        lines.append(f"| {s['model']} | " + " | ".join(cells) + " |")
    if lat:
        lines += ["", f"## Latency per comment (batch 1, {lat['in_process_jax']['n']} real test "
                      "comments one at a time, seed 0's export)", ""]
        if meta.get("latency_command"):
            lines += [f"Command: `{meta['latency_command']}` (load average at start "
                      f"{meta['latency_load_at_start']}).", ""]
        lines += [
                  "| path | p50 ms | p90 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
        for k, v in lat.items():
            lines.append(f"| {k} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} | "
                         f"{v['max_ms']:.2f} |")
        rs = lat["rest_server"]
        lines += ["", f"REST: {rs['non_200']} non-200 answers; {rs['review_enqueued']} comments "
                      "went to the review queue (SQLite, committed before the answer)."]
    lines += ["", "Data: " + meta["credit"] + "."]
    if not meta.get("complete", True):
        lines += ["", "**Partial**: the run was interrupted; only the rows above were measured."]
    if meta.get("quick"):
        lines += ["", "**Quick mode** (smoke run); not a measurement."]
    return "\n".join(lines) + "\n"


def write(args, argv, rows, lat, partial: bool, load, extra=None) -> str:
    import jax
    import sklearn

    from mlsd_jax.tasks.moderation import INSULTS_CREDIT

    cfg = _compose(["+task=moderation"])
    meta = {"command": "python benchmarks/moderation.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "seeds": args.seeds, "quick": args.quick, "load_at_start": load,
            "block_precision": float(cfg.task.block_precision),
            "review_recall": float(cfg.task.review_recall),
            "host": f"{platform.processor() or platform.machine()}, CPU, jax {jax.__version__}, "
                    f"scikit-learn {sklearn.__version__}",
            "credit": INSULTS_CREDIT, "complete": not partial, **(extra or {})}
    summary = summarize(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "moderation_quick" if args.quick else "moderation"
    (out / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "latency": lat, "runs": rows}, indent=2,
        default=float))
    text = markdown(summary, lat, meta)
    (out / f"{stem}.md").write_text(text)
    return text


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--peers-only", action="store_true")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--latency-comments", type=int, default=500)
    ap.add_argument("--latency-only", action="store_true",
                    help="train seed 0 once, measure latency, and merge it into the results "
                         "already in --out (quality rows kept)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.latency_comments = args.seeds[:1], 60
    load = [round(x, 2) for x in os.getloadavg()]

    from mlsd_jax.tasks.moderation import load_data

    rows, lat = [], None
    if args.latency_only:
        return latency_only(args, argv, load)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in args.seeds:
            cfg = _compose(["+task=moderation", f"data.seed={seed}"])
            data = load_data(cfg.data)
            for name, row in sklearn_peers(data, cfg.task, args.quick).items():
                rows.append({"seed": seed, "model": name, **row})
                print(seed, name, {k: round(v, 4) for k, v in row.items()
                                   if k in ("test/auc", "valid/auc", "C")}, flush=True)
            if not args.peers_only:
                want_export = seed == args.seeds[0] and not args.no_latency
                row = ours(seed, args.quick, tmp / f"run{seed}", export=want_export)
                rows.append({"seed": seed, "model": "ours_tfidf_logreg_jax",
                             **{k: v for k, v in row.items() if k != "export"}})
                print(seed, "ours", {k: round(v, 4) for k, v in row.items()
                                     if k in ("test/auc", "valid/auc")}, flush=True)
                if want_export:
                    texts = list(data.text[data.splits["test"]][:args.latency_comments])
                    lat = latency(row["export"], texts, tmp)
                    print(json.dumps(lat), flush=True)
            write(args, argv, rows, lat, True, load)
    print(write(args, argv, rows, lat, False, load))
    return 0


def latency_only(args, argv, load) -> int:
    from mlsd_jax.tasks.moderation import load_data

    stem = Path(args.out) / ("moderation_quick" if args.quick else "moderation")
    before = json.loads(stem.with_suffix(".json").read_text())
    seed = args.seeds[0]
    data = load_data(_compose(["+task=moderation", f"data.seed={seed}"]).data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        row = ours(seed, args.quick, tmp / "run", export=True)
        texts = list(data.text[data.splits["test"]][:args.latency_comments])
        lat = latency(row["export"], texts, tmp)
    print(json.dumps(lat), flush=True)
    args.seeds = before["meta"]["seeds"]
    extra = {"latency_command": "python benchmarks/moderation.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), "latency_load_at_start": load}
    print(write(args, before["meta"]["command"].split()[2:], before["runs"], lat, False,
                before["meta"]["load_at_start"], extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
