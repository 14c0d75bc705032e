"""Click-through-rate prediction: raw impression fields -> fitted feature spec -> CTR model.

Data (``ctr/data=``): MovieLens with click = rating >= 4 (default, MovieLens-100k), the Open
Bandit Dataset click log (``obd``), or Criteo TSV files of any size (``criteo`` with
``data.path``). MovieLens and OBD are split globally by time (the latest 20% of impressions are
test, the 10% before them validation, the rest train; users that arrive late are cold, as in
production); Criteo files are in time order and split by position the same way. The feature
spec (vocabularies with OOV ids, numeric statistics and quantile buckets) is fitted on training
rows only.

Models (``ctr/model=``): logistic regression, FM, DeepFM, Wide & Deep, DCN-v2, all over one
field-embedding front-end (:mod:`mlsd_jax.models.ctr`). Loss (``ctr/loss=``): binary
cross-entropy or focal loss. Metrics: ROC-AUC (validation AUC selects), log-loss, calibration by
decile of predicted CTR with its ECE and the predicted/observed ratio, equal-width ECE, and
the mean predicted CTR. The exported signature takes the fields a client has (ids and side
fields as strings, numbers as float32, genres ``|``-joined) and returns ``prob`` and ``logit``.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlsd_jax.data import ctr as ctr_data
from mlsd_jax.data.tabular import ArrayBatches
from mlsd_jax.errors import check
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.metrics.calibration import CalibrationByDecile
from mlsd_jax.tasks.base import Serving, Signature, Task, serving_name

DATASETS = ("movielens", "obd", "criteo")


# ------------------------------------------------------------------------------------ losses
def binary_cross_entropy(logit, label, weight, *, positive_weight: float = 1.0,
                         label_smoothing: float = 0.0):
    """Weighted mean sigmoid cross-entropy (the CTR log-loss); padding rows have weight 0."""
    target = label * (1 - label_smoothing) + 0.5 * label_smoothing
    w = weight * jnp.where(label > 0.5, positive_weight, 1.0)
    per = optax.sigmoid_binary_cross_entropy(logit, target)
    return jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9)


def focal_loss(logit, label, weight, *, gamma: float = 2.0, alpha: float | None = None):
    """Sigmoid focal loss (Lin et al. 2017): cross-entropy scaled by ``(1 - p_t)^gamma`` so
    easy negatives count less; ``alpha`` weighs positives (``1 - alpha`` negatives). It trades
    calibration for ranking on rare clicks; log-loss and calibration still report the truth."""
    per = optax.sigmoid_focal_loss(logit, label, alpha=alpha, gamma=gamma)
    return jnp.sum(weight * per) / jnp.maximum(jnp.sum(weight), 1e-9)


MAX_REFERENCE_ROWS = 20_000


def bounded_rows(rows: np.ndarray, limit: int = MAX_REFERENCE_ROWS, seed: int = 0) -> np.ndarray:
    """``rows``, or a seeded sample of ``limit`` of them in their order (the reference profile
    of a large validation split)."""
    rows = np.asarray(rows)
    if len(rows) <= limit:
        return rows
    return rows[np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]


# ----------------------------------------------------------------------------------- features
def _feature_spec(data_cfg: Mapping[str, Any]):
    """Declarations from the data config: categorical, multi-valued and numeric fields."""
    from mlsd_jax.features import Categorical, FeatureSpec, MultiCategorical, Numeric

    hash_buckets = data_cfg.get("hash_buckets")
    min_count = int(data_cfg.get("min_count", 1))
    feats = [Categorical(name, min_count=min_count, hash_buckets=hash_buckets,
                         missing_values=("",))
             for name in data_cfg.get("categorical", [])]
    feats += [MultiCategorical(name, sep=str(data_cfg.get("sep", "|")),
                               max_len=int(data_cfg.get("max_len", 8)), min_count=min_count)
              for name in data_cfg.get("multi_valued", [])]
    logged = set(data_cfg.get("log_numeric", []))
    buckets = data_cfg.get("numeric_buckets")
    feats += [Numeric(name, log=name in logged, missing_indicator=True, buckets=buckets or None)
              for name in data_cfg.get("numeric", [])]
    if not feats:
        raise ValueError("data: no fields; set data.categorical, data.multi_valued or "
                         "data.numeric")
    return FeatureSpec(feats)


def _fitted_from_json(features):
    from mlsd_jax.features import FittedFeatureSpec

    return features if isinstance(features, FittedFeatureSpec) else \
        FittedFeatureSpec.from_json(features)


def _prefixes(data_cfg: Mapping[str, Any]) -> dict[str, int]:
    """``data.prefix``: raw fields replaced by their first characters before encoding."""
    out = {str(k): int(v) for k, v in dict(data_cfg.get("prefix") or {}).items()}
    for k, v in out.items():
        check(v >= 1, f"data.prefix.{k}", v, "a prefix length >= 1")
    return out


def _derive_np(raw: Mapping[str, Any], prefixes: Mapping[str, int]) -> dict:
    """The numpy twin of :func:`_derive_tf`: prefixed fields cut to their first characters.

    A field may come as ``str``, UTF-8 ``bytes`` (a REST ``{"b64": ...}`` value, a gRPC
    ``DT_STRING`` tensor, a fixed-width ``S`` array) or a mix: bytes are decoded before the
    cut, so the prefix counts characters as ``tf.strings.substr(unit="UTF8_CHAR")`` does and
    bytes and str give the same codes. The field's shape is kept."""
    out = dict(raw)
    for name, length in prefixes.items():
        if name in out:
            column = np.asarray(out[name])
            if column.dtype.kind not in "OSU":
                raise TypeError(f"input {name!r}: expected strings (str or UTF-8 bytes), got "
                                f"dtype {column.dtype}")
            cut = ctr_data.zip_prefix_np(column.astype(object), length)
            out[name] = cut.reshape(column.shape)
    return out


def _derive_tf(raw: Mapping[str, Any], prefixes: Mapping[str, int]) -> dict:
    out = dict(raw)
    for name, length in prefixes.items():
        if name in out:
            out[name] = ctr_data.zip_prefix_tf(out[name], length)
    return out


def forward(apply, consts, inputs, *, train: bool, spec=None):
    """Encoded fields -> numeric transforms (consts) -> CTR model -> logit, probability, and
    ``embedding_l2 [batch]`` (squared norms of the embeddings each row read, for the loss).

    The model's output is read relative to ``consts["prior_logit"]``, the log-odds of the
    training click rate: an untrained model predicts the base rate, so a 0.5% click log does
    not spend its first hundreds of steps (and its early-stopping patience) learning a bias.
    """
    x = spec.apply(consts, inputs)
    logit, l2 = apply(x, train=train, with_l2=True)
    logit = logit + consts["prior_logit"]
    return {"logit": logit, "prob": jax.nn.sigmoid(logit), "embedding_l2": l2}


def serving(cfg: Mapping[str, Any], features) -> Serving:
    """Model, forward and the raw-field signature from config and the fitted spec alone.

    ``serving_default`` takes each field as a client has it: ids and categories as strings
    ([batch]), numbers as float32 ([batch], NaN = unknown), multi-valued fields as one
    ``|``-joined string per row; unseen ids and categories read their field's OOV row.
    """
    import hydra

    spec = _fitted_from_json(features)
    id_dropout = {str(k): float(v) for k, v in dict(cfg["data"].get("id_dropout") or {}).items()}
    model = hydra.utils.instantiate(cfg["model"], cardinalities=dict(spec.cardinalities),
                                    id_dropout=id_dropout)
    fwd = functools.partial(forward, spec=spec)
    prefixes = _prefixes(cfg["data"])
    names = {c: serving_name(c) for c in spec.raw_signature}

    def columns(raw):
        return {c: raw[n] for c, n in names.items()}

    signature = Signature(
        inputs={names[c]: v for c, v in spec.raw_signature.items()},
        encoded=dict(spec.encoded_signature),
        outputs={"prob": "float32 [batch]: predicted click probability",
                 "logit": "float32 [batch]: log-odds of a click"},
        predict=lambda apply, consts, x: fwd(apply, consts, x, train=False),
        encode_np=lambda raw: spec.encode_np(_derive_np(columns(raw), prefixes)),
        encode_tf=lambda raw: spec.encode_tf(_derive_tf(columns(raw), prefixes)),
        tf_module=spec.tf_module)
    return Serving(model=model, forward=fwd, signatures={"serving_default": signature})


# --------------------------------------------------------------------------------------- data
def load_clicks(data_cfg: Mapping[str, Any]) -> ctr_data.ClickLog:
    """The in-memory click log named by ``data.name`` (``movielens`` or ``obd``)."""
    name = data_cfg["name"]
    if name == "movielens":
        return ctr_data.movielens_clicks(data_cfg.get("path"),
                                         threshold=float(data_cfg.get("click_threshold", 4)))
    if name == "obd":
        if data_cfg.get("path"):
            raise ValueError("data.path is not used by ctr/data=obd (the packaged Open Bandit "
                             "Dataset sample); use data.policies / data.campaigns")
        return ctr_data.obd_clicks(tuple(data_cfg.get("policies", ctr_data.OBD_POLICIES)),
                                   tuple(data_cfg.get("campaigns", ctr_data.OBD_CAMPAIGNS)))
    raise ValueError(f"data.name={name!r}; valid choices: {list(DATASETS)}")


def _in_memory(data_cfg, trainer_cfg):
    """Click log -> time split -> spec fitted on train -> encoded arrays and batches."""
    log = load_clicks(data_cfg)
    parts = ctr_data.time_split(log.timestamp, float(data_cfg["valid_fraction"]),
                                float(data_cfg["test_fraction"]))
    prefixes = _prefixes(data_cfg)
    columns = _derive_np(log.columns, prefixes)
    spec = _feature_spec(data_cfg).fit({k: v[parts["train"]] for k, v in columns.items()})
    arrays = {**{k: np.asarray(v) for k, v in spec.encode_np(columns).items()},
              "label": log.label}

    def rows(split, batch_size):
        return ArrayBatches({k: v[parts[split]] for k, v in arrays.items()}, batch_size)

    train = rows("train", int(trainer_cfg["batch_size"]))
    evals = {s: rows(s, int(trainer_cfg["eval_batch_size"])) for s in ("valid", "test")
             if len(parts[s])}
    raw_example = {serving_name(k): v[parts["train"][:8]] for k, v in log.columns.items()
                   if k in spec.raw_signature}
    info = {**log.info, "rows": int(len(log)), "positive_rate": float(log.label.mean()),
            "split": f"global time order: the latest {data_cfg['test_fraction']:.0%} of "
                     f"impressions are test, the {data_cfg['valid_fraction']:.0%} before them "
                     f"valid, the rest train (ties stay with the earlier split)",
            **ctr_data.describe_split(log, parts), "fingerprint": _fingerprint(log)}

    def reference_inputs():
        """The valid impressions' raw fields under their signature names, and their clicks."""
        rows = bounded_rows(parts["valid"])
        return {**{serving_name(k): v[rows] for k, v in log.columns.items()
                   if k in spec.raw_signature}, "label": log.label[rows]}

    return spec, train, evals, raw_example, info, reference_inputs


def _criteo(data_cfg, trainer_cfg):
    """Criteo TSV -> memory-mapped store (converted once) -> block-shuffled batches."""
    if not data_cfg.get("path"):
        raise ValueError("ctr/data=criteo needs data.path=<a Criteo TSV file (label, I1-I13, "
                         "C1-C26; plain or .gz), a folder of day files or a list of files>")
    store = ctr_data.open_criteo(
        data_cfg["path"], _feature_spec(data_cfg), fit_rows=int(data_cfg.get("fit_rows", 200_000)),
        valid_fraction=float(data_cfg["valid_fraction"]),
        test_fraction=float(data_cfg["test_fraction"]),
        block_bytes=int(data_cfg.get("block_bytes", 64 << 20)),
        progress=bool(data_cfg.get("progress", True)))
    spec = _fitted_from_json(store.features)
    block = int(data_cfg.get("shuffle_block_rows", 65536))

    def batches(split, batch_size):
        lo, hi = store.splits[split]
        return ctr_data.BlockBatches(store.rows, lo, hi, batch_size, block)

    train = batches("train", int(trainer_cfg["batch_size"]))
    evals = {s: batches(s, int(trainer_cfg["eval_batch_size"])) for s in ("valid", "test")
             if store.splits[s][1] > store.splits[s][0]}
    first = next(ctr_data.read_criteo_chunks(store.meta["sources"][0], block_bytes=1 << 20))
    raw_example = {serving_name(k): v[:8]
                   for k, v in first.columns(list(spec.raw_signature)).items()}
    lo, hi = store.splits["train"]
    info = {"dataset": "criteo", "sources": store.meta["sources"], "rows": len(store),
            "positive_rate": store.meta["positive_rate"], "fit_rows": store.meta["fit_rows"],
            "train_ctr": float(np.mean(store.label[lo:hi], dtype=np.float64)),
            "store": str(store.directory),
            "split": f"file order (Criteo logs are chronological): the last "
                     f"{data_cfg['test_fraction']:.0%} of rows are test, the "
                     f"{data_cfg['valid_fraction']:.0%} before them valid, the rest train",
            **{f"{s}_rows": hi - lo for s, (lo, hi) in store.splits.items()}}
    return spec, train, evals, raw_example, info, None  # the store keeps encoded rows only


def _fingerprint(log: ctr_data.ClickLog) -> str:
    from mlsd_jax.export.bundle import fingerprint

    arrays = [np.asarray([str(x) for x in v]).astype("U") if v.dtype == object else v
              for _, v in sorted(log.columns.items())]
    return fingerprint(*arrays, log.label, log.timestamp)


# --------------------------------------------------------------------------------------- task
def ctr_metrics() -> dict[str, ms.Metric]:
    """The CTR metrics (validation AUC selects): see the module docstring."""
    return {
        "auc": ms.BinaryAUC(pred="prob", label="label"),
        "logloss": ms.LogLoss(pred="logit", label="label", from_logits=True),
        "calibration": CalibrationByDecile(pred="logit", label="label", from_logits=True),
        "ece": ms.ExpectedCalibrationError(pred="prob", label="label", bins=10),
        "mean_prob": ms.Mean("prob"),
    }


def build_ctr_task(cfg: Mapping[str, Any]) -> Task:
    import hydra

    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    name = data_cfg["name"]
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r}; valid choices: {list(DATASETS)}")
    load = _criteo if name == "criteo" else _in_memory
    spec, train, evals, raw_example, info, reference_inputs = load(data_cfg, trainer_cfg)
    features = spec.to_json()
    srv = serving(cfg, features)
    loss = hydra.utils.instantiate(cfg["loss"])

    embedding_l2 = float(task_cfg.get("embedding_l2", 0.0))
    check(embedding_l2 >= 0, "task.embedding_l2", embedding_l2, "a penalty weight >= 0")

    def loss_fn(outputs, batch):
        w = batch["weight"]
        value = loss(outputs["logit"], batch["label"], w)
        l2 = jnp.sum(w * outputs["embedding_l2"]) / jnp.maximum(jnp.sum(w), 1e-9)
        return value + embedding_l2 * l2, {"mean_prob": jnp.mean(outputs["prob"]),
                                           "embedding_l2": l2}

    rate = min(max(float(info["train_ctr"]), 1e-6), 1 - 1e-6)
    consts = {**spec.consts, "prior_logit": np.float32(np.log(rate) - np.log1p(-rate))}
    metrics = ctr_metrics()
    target = task_cfg.get("target_metric", "auc")
    if target not in metrics or target == "calibration":
        raise ValueError(f"task.target_metric={target!r}; valid: auc, logloss, ece")
    example = next(iter(evals["valid"].eval())) if "valid" in evals else next(train.train(0))
    return Task(
        name="ctr", model=srv.model, consts=consts, forward=srv.forward, loss_fn=loss_fn,
        metrics=metrics, example_weight=lambda batch: batch["weight"],
        train_batches=train.train, eval_splits={s: b.eval for s, b in evals.items()},
        example_batch=example, input_keys=tuple(spec.encoded_signature),
        signatures=srv.signatures, serving="mlsd_jax.tasks.ctr:serving", features=features,
        serving_examples={"serving_default": raw_example}, target_metric=target,
        target_mode="max" if target == "auc" else "min", info=info,
        reference_inputs=reference_inputs)
