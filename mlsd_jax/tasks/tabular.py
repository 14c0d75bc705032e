"""Tabular binary classification: raw columns -> fitted feature spec -> TabularNet -> AUC & co.

Default data: UCI Adult (income > 50K), split by a seeded stratified rule (the packaged copy
merges Adult's train and test files). ``tabular/data=acs_employment``: the US Census ACS
employment data (Massachusetts): train and valid from the 2015 reference year, test from the
analysis years in ``data.test_years`` (the rest of 2016-2018 is left for monitoring).
The feature spec (vocabularies, numeric statistics) is fitted on the training rows only; the
exported signature takes the raw columns as a client has them (strings with ``?`` for missing,
numbers) and runs the same encoder in TensorFlow. ``reference_inputs`` hands the validation
rows (raw, under their signature names) and labels to the reference profile saved with the
export. ``data.feedback``: files of logged raw rows with their late 0/1 labels
(:mod:`mlsd_jax.monitoring.feedback`, written by ``python -m experiments.retrain``), added to the
train split only.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlsd_jax.data import tabular as tab
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.tasks.base import Serving, Signature, Task, serving_name


def _feature_spec(data_cfg: Mapping[str, Any]):
    from mlsd_jax.features import Categorical, FeatureSpec, Numeric

    missing = tuple(data_cfg.get("missing_values", ["?", ""]))
    feats = []
    for name in data_cfg["categorical"]:
        feats.append(Categorical(name, min_count=int(data_cfg.get("min_count", 1)),
                                 missing_values=missing))
    logged = set(data_cfg.get("log_numeric", []))
    buckets = int(data_cfg.get("numeric_buckets", 0))
    ple = bool(data_cfg.get("piecewise_linear", False))
    for name in data_cfg["numeric"]:
        feats.append(Numeric(name, log=name in logged, missing_indicator=True,
                             buckets=buckets or None, piecewise_linear=ple and buckets > 0))
    return FeatureSpec(feats)


def _fitted_from_json(features):
    from mlsd_jax.features import FittedFeatureSpec

    return features if isinstance(features, FittedFeatureSpec) else FittedFeatureSpec.from_json(features)


def forward(apply, consts, inputs, *, train: bool, spec=None):
    """Encoded columns -> numeric transforms (consts) -> logit, probability."""
    x = spec.apply(consts, inputs)
    logit = apply(x, train=train)
    return {"logit": logit, "prob": jax.nn.sigmoid(logit)}


def serving(cfg: Mapping[str, Any], features) -> Serving:
    """Model, forward and the raw-column signature from config and the fitted spec alone."""
    import functools

    import hydra

    spec = _fitted_from_json(features)
    model = hydra.utils.instantiate(cfg["model"], cardinalities=dict(spec.cardinalities))
    fwd = functools.partial(forward, spec=spec)
    names = {c: serving_name(c) for c in spec.raw_signature}  # marital-status -> marital_status

    def columns(raw):
        return {c: raw[n] for c, n in names.items()}

    signature = Signature(
        inputs={names[c]: v for c, v in spec.raw_signature.items()},
        encoded=dict(spec.encoded_signature),
        outputs={"prob": f"float32 [batch]: P({cfg['data']['label']} is positive)",
                 "logit": "float32 [batch]: log-odds of the positive class"},
        predict=lambda apply, consts, x: fwd(apply, consts, x, train=False),
        encode_np=lambda raw: spec.encode_np(columns(raw)),
        encode_tf=lambda raw: spec.encode_tf(columns(raw)), tf_module=spec.tf_module)
    return Serving(model=model, forward=fwd, signatures={"serving_default": signature})


def serving_inputs(columns: Mapping[str, np.ndarray]) -> dict:
    """Table columns keyed by their signature input names (``marital-status`` -> ``marital_status``)."""
    return {serving_name(c): v for c, v in columns.items()}


def _load(data_cfg) -> tuple[dict, np.ndarray, str]:
    columns = list(data_cfg["categorical"]) + list(data_cfg["numeric"]) + [data_cfg["label"]]
    if data_cfg.get("path"):
        table, source = tab.read_table(data_cfg["path"], columns), str(data_cfg["path"])
    else:
        table, source = tab.read_table(tab.fetch_packaged(tab.ADULT), columns), "uci_adult"
    labels = tab.binary_labels(table.pop(data_cfg["label"]), data_cfg["positive"],
                               data_cfg["label"])
    return table, labels, source


def _load_acs(data_cfg) -> tuple[dict, np.ndarray, str, dict, str]:
    """ACS employment: 2015 rows split seeded-stratified into train / valid; test = the analysis
    rows of ``data.test_years`` (never seen in training or model selection)."""
    from mlsd_jax.data.acs import load_acs_employment

    if data_cfg.get("path"):
        raise ValueError(f"data.path={data_cfg['path']!r}: tabular/data=acs_employment reads the "
                         f"packaged ACS files; use tabular/data=adult with data.path for a file")
    ref = load_acs_employment("reference")
    test_years = [int(y) for y in data_cfg.get("test_years") or []]
    bad = sorted(set(test_years) - {2016, 2017, 2018})
    if bad:
        raise ValueError(f"data.test_years={bad}: the ACS analysis years are 2016, 2017, 2018")
    keep = {}
    if test_years:
        ana = load_acs_employment("analysis")
        keep = {k: v[np.isin(ana["year"], test_years)] for k, v in ana.items()}
    numeric = set(data_cfg["numeric"])
    columns = list(data_cfg["categorical"]) + list(data_cfg["numeric"])
    missing = [c for c in columns + [data_cfg["label"]] if c not in ref]
    if missing:
        raise KeyError(f"data.categorical/numeric/label name {missing}; the ACS columns are "
                       f"{sorted(ref)}")

    def column(name):
        v = np.concatenate([ref[name], keep[name]]) if keep else ref[name]
        # SCHL arrives as code strings ('16'); numeric columns become float64 (NaN missing).
        if name in numeric:
            return np.asarray([np.nan if x is None else float(x) for x in v], np.float64) \
                if v.dtype == object else v.astype(np.float64)
        return np.asarray([None if x is None else str(x) for x in v], dtype=object)

    table = {c: column(c) for c in columns}
    y = np.concatenate([ref[data_cfg["label"]], keep[data_cfg["label"]]]) if keep \
        else ref[data_cfg["label"]]
    labels = tab.binary_labels(y, [str(p) for p in data_cfg["positive"]], data_cfg["label"])
    n_ref = len(ref["id"])
    seed, vf = int(data_cfg["seed"]), float(data_cfg["valid_fraction"])
    parts = tab.stratified_split(labels[:n_ref], {"valid": vf}, seed)
    parts["test"] = np.arange(n_ref, len(labels))
    rule = (f"ACS 2015 seeded stratified by label (seed {seed}): valid {vf:.0%}, rest train; "
            f"test = analysis years {test_years}")
    return table, labels, "acs_employment_MA", parts, rule


def _feedback_column(values, name: str, numeric: bool, path) -> np.ndarray:
    if numeric:
        try:
            return np.asarray([np.nan if v is None else float(v) for v in values], np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"data.feedback file {str(path)!r}: column {name!r} is numeric "
                             f"(data.numeric) but holds non-numbers") from None
    return np.asarray([None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
                       for v in values], dtype=object)


def _add_feedback(data_cfg, table: dict, labels: np.ndarray, parts: dict):
    """``data.feedback``: files of raw rows (columns under their names or signature input names)
    and a 0/1 ``label`` column (:func:`mlsd_jax.monitoring.feedback.write_feedback`), appended
    to the TRAIN split only (valid and test stay as they were)."""
    from mlsd_jax.monitoring.feedback import read_feedback

    files = data_cfg.get("feedback")
    if isinstance(files, str):
        files = [files]
    numeric = set(data_cfg["numeric"])
    added, start = [], len(labels)
    new_cols: dict[str, list] = {c: [] for c in table}
    new_labels = []
    for path in files:
        cols = read_feedback(path)
        if "label" not in cols:
            raise KeyError(f"data.feedback file {str(path)!r}: no 'label' column (0/1); it has "
                           f"{sorted(cols)}")
        for c in table:
            name = c if c in cols else serving_name(c)
            if name not in cols:
                raise KeyError(f"data.feedback file {str(path)!r}: no column {c!r} (or "
                               f"{serving_name(c)!r}); it has {sorted(cols)}")
            new_cols[c].append(_feedback_column(cols[name], c, c in numeric, path))
        try:
            y = np.asarray([np.nan if v is None else float(v) for v in cols["label"]], np.float64)
        except (TypeError, ValueError):
            y = np.array([np.nan])
        if not np.all(np.isin(y, (0.0, 1.0))):
            raise ValueError(f"data.feedback file {str(path)!r}: column 'label' must hold 0/1 "
                             f"labels (no missing values)")
        new_labels.append(y.astype(labels.dtype))
        added.append(int(len(y)))
    table = {c: np.concatenate([v, *new_cols[c]]) for c, v in table.items()}
    labels = np.concatenate([labels, *new_labels])
    parts = {**parts, "train": np.concatenate([parts["train"], np.arange(start, len(labels))])}
    info = {"feedback": [str(f) for f in files], "feedback_rows_added_to_train": int(sum(added))}
    return table, labels, parts, info


def build_tabular_task(cfg: Mapping[str, Any]) -> Task:
    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    if data_cfg.get("name") == "acs_employment":
        table, labels, source, parts, split_rule = _load_acs(data_cfg)
    else:
        table, labels, source = _load(data_cfg)
        fractions = {"valid": float(data_cfg["valid_fraction"]),
                     "test": float(data_cfg["test_fraction"])}
        parts = tab.stratified_split(labels, fractions, int(data_cfg["seed"]))
        split_rule = (f"seeded stratified by label (seed {int(data_cfg['seed'])}): "
                      f"valid {fractions['valid']:.0%}, test {fractions['test']:.0%}, rest train")
    feedback_info = {}
    if data_cfg.get("feedback"):
        table, labels, parts, feedback_info = _add_feedback(data_cfg, table, labels, parts)
    spec = _feature_spec(data_cfg).fit({k: v[parts["train"]] for k, v in table.items()})
    features = spec.to_json()
    srv = serving(cfg, features)
    encoded = {k: np.asarray(v) for k, v in spec.encode_np(table).items()}
    arrays = {**encoded, "label": labels}

    def rows(split, batch_size):
        return tab.ArrayBatches({k: v[parts[split]] for k, v in arrays.items()}, batch_size)

    train = rows("train", int(trainer_cfg["batch_size"]))
    evals = {s: rows(s, int(trainer_cfg["eval_batch_size"])) for s in ("valid", "test")
             if len(parts[s])}
    pos_weight = float(task_cfg.get("positive_weight", 1.0))
    smoothing = float(task_cfg.get("label_smoothing", 0.0))

    def loss_fn(outputs, batch):
        y = batch["label"]
        target = y * (1 - smoothing) + 0.5 * smoothing
        w = batch["weight"] * jnp.where(y > 0.5, pos_weight, 1.0)
        per = optax.sigmoid_binary_cross_entropy(outputs["logit"], target)
        loss = jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9)
        return loss, {"positive_rate_pred": jnp.mean(outputs["prob"])}

    threshold = float(task_cfg.get("threshold", 0.5))
    metrics = {
        "auc": ms.BinaryAUC(pred="prob", label="label"),
        "pr_auc": ms.AveragePrecision(pred="prob", label="label"),
        "logloss": ms.LogLoss(pred="prob", label="label"),
        "accuracy": ms.Accuracy(pred="prob", label="label", threshold=threshold),
        "precision": ms.Precision(pred="prob", label="label", threshold=threshold),
        "recall": ms.Recall(pred="prob", label="label", threshold=threshold),
        "f1": ms.F1(pred="prob", label="label", threshold=threshold),
        "ece": ms.ExpectedCalibrationError(pred="prob", label="label"),
    }
    target = task_cfg.get("target_metric", "auc")
    if target not in metrics:
        raise ValueError(f"task.target_metric={target!r}; valid: {sorted(metrics)}")
    example = next(iter(evals["valid"].eval())) if "valid" in evals else next(train.train(0))
    raw_example = serving_inputs({k: v[parts["train"][:8]] for k, v in table.items()})
    info = {"dataset": source, "rows": int(len(labels)), "positive_rate": float(labels.mean()),
            "split": split_rule,
            **tab.describe_split(labels, parts),
            "fingerprint": _fingerprint(table, labels), **feedback_info}

    def reference_inputs():
        """The valid split's raw columns under their signature names, and its labels."""
        rows = parts["valid"]
        return {**serving_inputs({k: v[rows] for k, v in table.items()}), "label": labels[rows]}

    return Task(
        name="tabular", model=srv.model, consts=spec.consts, forward=srv.forward,
        loss_fn=loss_fn, metrics=metrics, example_weight=lambda batch: batch["weight"],
        train_batches=train.train, eval_splits={s: b.eval for s, b in evals.items()},
        example_batch=example, input_keys=tuple(encoded), signatures=srv.signatures,
        serving="mlsd_jax.tasks.tabular:serving", features=features,
        serving_examples={"serving_default": raw_example},
        target_metric=target, target_mode="min" if target in ("logloss", "ece") else "max",
        info=info, reference_inputs=reference_inputs)


def _fingerprint(table: Mapping[str, np.ndarray], labels: np.ndarray) -> str:
    from mlsd_jax.export.bundle import fingerprint

    arrays = [np.asarray([str(x) for x in v]).astype("U") if v.dtype == object else v
              for _, v in sorted(table.items())]
    return fingerprint(*arrays, labels)
