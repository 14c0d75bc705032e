"""Fraud detection on imbalanced tabular data, built on the tabular task's pieces.

No real transaction-fraud table ships in any package, so the default data is the real UCI
**Spambase** table (4,601 e-mails × 57 word/character frequencies, kernlab's copy; identical
rows left out of the splits) with **spam standing in for fraud**, and spam subsampled to
``data.train_positive_rate`` of the training rows (default 2 %: every ham row kept, a seeded
sample of spam rows) for a fraud-like imbalance; validation and test are subsampled the same
way (``data.eval_positive_rate``; ``null`` = the training rate). Results say "Spambase with
spam subsampled to 2% (fraud-like imbalance)". ``data.name=creditcard data.path=FILE`` reads a
Kaggle/ULB ``creditcard.csv`` (Time, V1..V28, Amount, Class) with
:func:`mlsd_jax.data.spam.read_creditcard` and splits it by time: the earliest 70 % train, the
next 10 % valid, the last 20 % test.

The pipeline is the tabular task's (:mod:`mlsd_jax.tasks.tabular`): the feature spec
(signed log1p of the columns in ``data.log_numeric`` — every Spambase column, creditcard's
Amount — then standardisation; fitted on the real training rows only), the
``TabularNet`` model, the forward, and the exported signature taking the raw numeric columns
(the 57 Spambase columns, or Time, V1..V28, Amount).

Class imbalance (``task.imbalance``):

* ``none``: plain cross-entropy;
* ``class_weight``: positives weighted by the inverse class frequency of the training split
  (``#negatives / #positives``);
* ``focal``: the sigmoid focal loss (:func:`mlsd_jax.tasks.ctr.focal_loss`,
  ``task.focal_gamma`` / ``task.focal_alpha``);
* ``smote``: :func:`smote` (ours, numpy) synthesises positives on segments between a training
  positive and one of its ``task.smote_k`` nearest training positives (distances in the
  fitted feature space), until positives are ``task.smote_ratio`` × the negatives. It runs on
  the training rows only, after the feature spec is fitted on the real rows; validation and
  test are never touched.

Decision threshold: chosen on the validation split (never test) for ``task.recall_target``
(catch that share of the positives at the best precision, :func:`choose_recall_threshold`).
Every split reports PR-AUC (the headline for imbalanced data; validation PR-AUC is the target
metric), ROC-AUC, log-loss, ECE and, at the validation threshold, precision, recall, F1, the
false-positive rate and the flagged share.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
import optax

from mlsd_jax.data import spam as sd
from mlsd_jax.data import tabular as tab
from mlsd_jax.errors import ConfigError, check
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.tasks import tabular as tabular_task
from mlsd_jax.tasks.base import Task, split_scorer
from mlsd_jax.tasks.ctr import bounded_rows, focal_loss
from mlsd_jax.tasks.spam import score_metrics, threshold_report

IMBALANCE = ("none", "class_weight", "focal", "smote")
DATASETS = ("spambase", "creditcard")
SPAMBASE_CREDIT = ("UCI Spambase (Hopkins, Reeber, Forman and Suermondt 1999; CC BY 4.0), the "
                   "spam.rda copy in Debian r-cran-kernlab 0.9-32-1; spam stands in for fraud")
CREDITCARD_COLUMNS = sd.CREDITCARD_COLUMNS[:-1]  # Time, V1..V28, Amount


# ------------------------------------------------------------------------------------ SMOTE
def nearest_neighbours(points: np.ndarray, k: int) -> np.ndarray:
    """Indices ``[n, min(k, n - 1)]`` of each row's nearest other rows (Euclidean; ties by
    index)."""
    x = np.asarray(points, np.float64)
    sq = np.sum(x * x, axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
    np.fill_diagonal(d, np.inf)
    k = min(int(k), len(x) - 1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def smote(points: np.ndarray, n_new: int, k: int = 5, seed: int = 0,
          space: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """SMOTE (Chawla et al. 2002): ``n_new`` synthetic rows from the positive rows ``points``.

    Each synthetic row picks a base row (uniformly, seeded), one of its ``k`` nearest positive
    neighbours (in ``space``, row-aligned with ``points``, e.g. the standardised features;
    default ``points``) and a gap ``u ~ U[0, 1)``: ``base + u * (neighbour - base)``, a point on
    the segment between two real positives. Returns the rows (``points``' dtype) and where
    each came from (``base``, ``neighbour`` row indices and ``gap``).
    """
    x = np.asarray(points)
    check(x.ndim == 2 and len(x) >= 2, "smote points", getattr(x, "shape", None),
          "a 2-D array with at least 2 positive rows")
    check(isinstance(k, int) and k >= 1, "task.smote_k", k, "an integer >= 1")
    n_new = int(n_new)
    nn = nearest_neighbours(x if space is None else space, k)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, len(x), n_new)
    neighbour = nn[base, rng.integers(0, nn.shape[1], n_new)]
    gap = rng.random(n_new)
    xf = x.astype(np.float64)
    new = xf[base] + gap[:, None] * (xf[neighbour] - xf[base])
    return new.astype(x.dtype), {"base": base, "neighbour": neighbour, "gap": gap}


def oversample(arrays: Mapping[str, np.ndarray], columns: list[str], spec, ratio: float, k: int,
               seed: int) -> tuple[dict, dict]:
    """The training ``arrays`` (encoded columns + ``label``) with SMOTE positives appended until
    positives are ``ratio`` × negatives. Neighbours are found in the fitted spec's transformed
    space (log, standardisation) of the real positives; values are interpolated raw."""
    y = np.asarray(arrays["label"])
    pos = np.flatnonzero(y > 0.5)
    n_neg = int(np.sum(y <= 0.5))
    n_new = max(int(round(ratio * n_neg)) - len(pos), 0)
    if n_new == 0 or len(pos) < 2:
        return dict(arrays), {"smote_rows": 0, "smote_real_positives": int(len(pos))}
    raw = np.stack([np.asarray(arrays[c], np.float64)[pos] for c in columns], axis=1)
    z = spec.apply(spec.consts, {c: jnp.asarray(arrays[c][pos]) for c in columns})
    space = np.stack([np.asarray(z[c], np.float64) for c in columns], axis=1)
    new, _ = smote(raw, n_new, k=k, seed=seed, space=space)
    out = {c: np.concatenate([arrays[c], new[:, i].astype(arrays[c].dtype)])
           for i, c in enumerate(columns)}
    out["label"] = np.concatenate([y, np.ones(n_new, y.dtype)])
    return out, {"smote_rows": int(n_new), "smote_real_positives": int(len(pos))}


# ------------------------------------------------------------------------------- thresholds
def choose_recall_threshold(probs, labels, recall_target: float) -> tuple[float, bool]:
    """The decision threshold (flag iff ``prob > threshold``) from one split's scores.

    Among the thresholds whose recall on these rows reaches ``recall_target``, the one with the
    best precision (ties: the highest threshold), placed halfway between the lowest flagged
    score and the next lower score. Returns ``(threshold, met)`` like
    :func:`mlsd_jax.tasks.spam.choose_threshold`; a recall target in (0, 1] can always be met
    (flagging every row reaches recall 1), so ``met`` is True.
    """
    p = np.asarray(probs, np.float64).reshape(-1)
    y = np.asarray(labels, np.float64).reshape(-1) > 0.5
    if len(p) == 0 or not y.any():
        raise ValueError("choose_recall_threshold: the split needs scores with at least one "
                         "positive row")
    check(0.0 < recall_target <= 1.0, "task.recall_target", recall_target, "a number in (0, 1]")
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    tp = np.cumsum(y)
    ends = np.flatnonzero(np.append(p[1:] != p[:-1], True))  # last row of each score group
    recall = tp[ends] / y.sum()
    precision = tp[ends] / (ends + 1)
    ok = np.flatnonzero(recall >= recall_target - 1e-12)
    best = ok[np.flatnonzero(precision[ok] == precision[ok].max())[0]]
    i = ends[best]
    nxt = p[i + 1] if i + 1 < len(p) else min(p[i] - 1e-6, np.nextafter(p[i], -np.inf))
    return float((p[i] + nxt) / 2.0), True


def report(probs, labels, threshold: float) -> dict[str, float]:
    """Every number a split reports for scores ``probs`` at the validation ``threshold``."""
    p = np.asarray(probs, np.float32)
    y = np.asarray(labels, np.float32)
    out = {k: float(ms.evaluate_arrays(m, {"prob": p}, {"label": y}))
           for k, m in score_metrics().items()}
    r = threshold_report(p, y, threshold)
    out.update(precision=r["precision"], recall=r["recall"], f1=r["f1"], fpr=r["ham_fpr"])
    out["flagged_rate"] = float(np.mean(p > threshold))
    out["mean_prob"] = float(np.mean(p))
    out["f1@0.5"] = threshold_report(p, y, 0.5)["f1"]
    out["threshold"] = float(threshold)
    return out


def fraud_evaluator(model, fwd, input_keys, eval_splits, recall_target: float):
    """``evaluator(trainer, state, split)``: the split's scores, the threshold chosen on the
    *validation* scores of the same state, and :func:`report` at it (one process)."""
    scorer = split_scorer(model, fwd, input_keys, eval_splits, task="fraud")

    def scores(trainer, state, split):
        p, cols = scorer(trainer, state, split)
        return p, cols["label"]

    def evaluator(trainer, state, split):
        p, y = scores(trainer, state, split)
        vp, vy = (p, y) if split == "valid" else scores(trainer, state, "valid")
        threshold, _ = choose_recall_threshold(vp, vy, recall_target)
        return report(p, y, threshold)

    return evaluator


# ------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class FraudData:
    """Raw numeric columns (the signature's inputs), labels (1 = positive), splits, facts."""

    columns: dict
    labels: np.ndarray
    splits: dict
    info: dict


def _rate(data_cfg, key: str):
    value = data_cfg.get(key)
    check(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                            and 0.0 < value < 1.0),
          f"data.{key}", value, "a positive rate in (0, 1) or null (no subsampling)")
    return None if value is None else float(value)


def subsample_positives(labels: np.ndarray, rows: np.ndarray, rate: float | None, seed: int,
                        split: str) -> np.ndarray:
    """``rows`` with every negative kept and a seeded sample of positives, so that positives
    are ``rate`` of the result (``None``: unchanged). Sorted row indices."""
    if rate is None:
        return rows
    y = labels[rows] > 0.5
    pos, neg = rows[y], rows[~y]
    natural = len(pos) / max(len(rows), 1)
    key = "data.train_positive_rate" if split == "train" else "data.eval_positive_rate"
    check(rate <= natural + 1e-12, key, rate,
          f"a rate at most the {split} split's own positive rate {natural:.4f} (positives are "
          f"subsampled, negatives all kept), or null")
    n_pos = max(1, int(round(rate * len(neg) / (1.0 - rate))))
    rng = np.random.default_rng([seed, {"train": 0, "valid": 1, "test": 2}.get(split, 3), 2026])
    kept = rng.choice(pos, size=min(n_pos, len(pos)), replace=False)
    return np.sort(np.concatenate([neg, kept]))


def _fractions(data_cfg) -> dict[str, float]:
    valid = float(data_cfg.get("valid_fraction", 0.1))
    test = float(data_cfg.get("test_fraction", 0.2))
    check(0 < valid and 0 < test and valid + test < 1, "data.valid_fraction + test_fraction",
          (valid, test), "positive fractions summing to less than 1")
    return {"train": 1.0 - valid - test, "valid": valid, "test": test}


def time_split(time: np.ndarray, fractions: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Rows ordered by ``time`` (stable): the earliest ``train`` share, then ``valid``, the
    last ``test`` share. Sorted row indices per split."""
    order = np.argsort(np.asarray(time), kind="stable")
    n = len(order)
    n_train = int(np.floor(fractions["train"] * n))
    n_valid = int(np.floor(fractions["valid"] * n))
    cut = {"train": order[:n_train], "valid": order[n_train:n_train + n_valid],
           "test": order[n_train + n_valid:]}
    return {k: np.sort(v).astype(np.int64) for k, v in cut.items()}


def load_data(data_cfg) -> FraudData:
    name = data_cfg.get("name", "spambase")
    seed = int(data_cfg.get("seed", 0))
    fractions = _fractions(data_cfg)
    train_rate = _rate(data_cfg, "train_positive_rate")
    eval_rate = _rate(data_cfg, "eval_positive_rate") if data_cfg.get(
        "eval_positive_rate") is not None else train_rate
    if name == "spambase":
        d = sd.load_spambase(data_cfg.get("path"), seed=seed, fractions=fractions)
        columns = {c: d.features[:, i].astype(np.float32) for i, c in enumerate(d.feature_names)}
        labels = d.label.astype(np.float32)
        splits = dict(d.splits)
        info = {"dataset": "spambase", "credit": SPAMBASE_CREDIT,
                "files": str(data_cfg.get("path") or "embedded copy"),
                "identical_rows_dropped": int(np.sum(d.duplicate_of >= 0)),
                "split": (f"identical rows dropped; seeded stratified by label (seed {seed}): "
                          + ", ".join(f"{k} {v:.0%}" for k, v in fractions.items()))}
    elif name == "creditcard":
        path = data_cfg.get("path")
        check(bool(path), "data.path", path, "the path of a creditcard.csv (Time, V1..V28, "
              "Amount, Class) with data.name=creditcard")
        c = sd.read_creditcard(path)
        check(len(c) >= 10, "data.path", str(path), "a creditcard.csv with at least 10 rows")
        columns = {"Time": c.time.astype(np.float32), "Amount": c.amount.astype(np.float32)}
        columns.update({f"V{i + 1}": c.features[:, i] for i in range(28)})
        columns = {k: columns[k] for k in CREDITCARD_COLUMNS}
        labels = c.label.astype(np.float32)
        splits = time_split(c.time, fractions)
        info = {"dataset": "creditcard", "files": str(path),
                "split": "by time: " + ", ".join(f"{k} {v:.0%}" for k, v in fractions.items())
                         + " (train earliest, test latest)"}
    else:
        raise ConfigError(f"data.name={name!r}: expected one of {list(DATASETS)}")
    natural = {f"{k}_positive_rate_before_subsampling": float(labels[v].mean()) if len(v) else 0.0
               for k, v in splits.items()}
    splits = {k: subsample_positives(labels, v, train_rate if k == "train" else eval_rate,
                                     seed, k) for k, v in splits.items()}
    for k, v in splits.items():
        check(len(v) and labels[v].sum() >= 1, f"data (split {k})", int(len(v)),
              "at least one positive row in every split")
    if name == "spambase" and train_rate is not None:
        info["data_note"] = (f"Spambase with spam subsampled to {train_rate:.0%} (fraud-like "
                             f"imbalance); valid/test at {eval_rate:.0%}. Spam stands in for "
                             f"fraud: this is not transaction data.")
    info.update({"rows": int(len(labels)), "train_positive_rate_setting": train_rate,
                 "eval_positive_rate_setting": eval_rate, **natural,
                 **tab.describe_split(labels, splits),
                 **{f"{k}_positives": int(labels[v].sum()) for k, v in splits.items()}})
    return FraudData(columns, labels, splits, info)


def data_config(data_cfg, data: FraudData) -> dict:
    """The tabular task's data fields for this table: every column numeric, ``log_numeric``
    (a list, or ``all``)."""
    names = list(data.columns)
    logged = data_cfg.get("log_numeric", "all")
    logged = names if logged == "all" else list(logged or [])
    unknown = sorted(set(logged) - set(names))
    check(not unknown, "data.log_numeric", unknown, f"'all' or names among the columns {names}")
    return {"categorical": [], "numeric": names, "log_numeric": logged,
            "numeric_buckets": int(data_cfg.get("numeric_buckets", 0) or 0),
            "piecewise_linear": bool(data_cfg.get("piecewise_linear", False))}


# ------------------------------------------------------------------------------------ build
def _imbalance(task_cfg) -> str:
    value = task_cfg.get("imbalance", "none")
    if value not in IMBALANCE:
        raise ConfigError(f"task.imbalance={value!r}: expected one of {list(IMBALANCE)}")
    return value


def build_fraud_task(cfg: Mapping[str, Any]) -> Task:
    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    imbalance = _imbalance(task_cfg)
    recall_target = task_cfg.get("recall_target", 0.8)
    check(isinstance(recall_target, (int, float)) and 0.0 < recall_target <= 1.0,
          "task.recall_target", recall_target, "a number in (0, 1]")
    data = load_data(data_cfg)
    train_rows = data.splits["train"]
    spec = tabular_task._feature_spec(data_config(data_cfg, data)).fit(
        {k: v[train_rows] for k, v in data.columns.items()})
    features = spec.to_json()
    srv = tabular_task.serving(cfg, features)
    encoded = {k: np.asarray(v) for k, v in spec.encode_np(data.columns).items()}
    arrays = {**encoded, "label": data.labels}
    split_arrays = {s: {k: v[rows] for k, v in arrays.items()} for s, rows in data.splits.items()}
    y_train = split_arrays["train"]["label"]
    n_pos, n_neg = float(np.sum(y_train > 0.5)), float(np.sum(y_train <= 0.5))
    extra: dict[str, Any] = {}
    if imbalance == "smote":
        ratio = task_cfg.get("smote_ratio", 1.0)
        check(isinstance(ratio, (int, float)) and 0 < ratio <= 1.0, "task.smote_ratio", ratio,
              "a number in (0, 1]: positives after SMOTE / negatives")
        split_arrays["train"], extra = oversample(
            split_arrays["train"], list(data.columns), spec, float(ratio),
            int(task_cfg.get("smote_k", 5)), seed=int(data_cfg.get("seed", 0)))

    train = tab.ArrayBatches(split_arrays["train"], int(trainer_cfg["batch_size"]))
    evals = {s: tab.ArrayBatches(split_arrays[s], int(trainer_cfg["eval_batch_size"]))
             for s in ("valid", "test")}
    pos_weight = n_neg / max(n_pos, 1.0) if imbalance == "class_weight" else 1.0
    gamma = float(task_cfg.get("focal_gamma", 2.0))
    alpha = task_cfg.get("focal_alpha")
    check(gamma >= 0, "task.focal_gamma", gamma, "a number >= 0")
    check(alpha is None or 0 < float(alpha) < 1, "task.focal_alpha", alpha,
          "a number in (0, 1) or null")
    alpha = None if alpha is None else float(alpha)

    def loss_fn(outputs, batch):
        y = batch["label"]
        if imbalance == "focal":
            loss = focal_loss(outputs["logit"], y, batch["weight"], gamma=gamma, alpha=alpha)
        else:
            w = batch["weight"] * jnp.where(y > 0.5, pos_weight, 1.0)
            per = optax.sigmoid_binary_cross_entropy(outputs["logit"], y)
            loss = jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9)
        return loss, {"positive_rate_pred": jnp.mean(outputs["prob"])}

    input_keys = tuple(encoded)
    evaluator = fraud_evaluator(srv.model, srv.forward, input_keys,
                                {s: b.eval for s, b in evals.items()}, float(recall_target))
    metrics = score_metrics()
    target = task_cfg.get("target_metric", "pr_auc")
    valid_targets = sorted(metrics) + ["f1", "precision"]
    if target not in valid_targets:
        raise ConfigError(f"task.target_metric={target!r}: expected one of {valid_targets}")
    raw_example = tabular_task.serving_inputs({k: v[train_rows[:8]]
                                               for k, v in data.columns.items()})
    info = {**data.info, "imbalance": imbalance, "recall_target": float(recall_target),
            "positive_weight": pos_weight, **extra,
            **({"focal_gamma": gamma, "focal_alpha": alpha} if imbalance == "focal" else {}),
            "fingerprint": tabular_task._fingerprint(data.columns, data.labels)}

    def reference_inputs():
        """The valid rows' raw columns under their signature names, and their labels."""
        rows = bounded_rows(data.splits["valid"])
        return {**tabular_task.serving_inputs({k: v[rows] for k, v in data.columns.items()}),
                "label": data.labels[rows]}

    return Task(
        name="fraud", model=srv.model, consts=spec.consts, forward=srv.forward, loss_fn=loss_fn,
        metrics=metrics, example_weight=lambda batch: batch["weight"],
        train_batches=train.train, eval_splits={s: b.eval for s, b in evals.items()},
        example_batch=next(evals["valid"].eval()), input_keys=input_keys,
        signatures=srv.signatures, serving="mlsd_jax.tasks.tabular:serving", features=features,
        serving_examples={"serving_default": raw_example}, evaluator=evaluator,
        target_metric=target, target_mode="min" if target in ("logloss", "ece") else "max",
        info=info, reference_inputs=reference_inputs)
