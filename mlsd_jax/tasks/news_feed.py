"""Personalized news feed: titles of a user's clicked news + candidate titles -> NRMS scores.

Data: MIND-format impressions (``behaviors.tsv`` + ``news.tsv``). The embedded default is a
**simulated** click log over real news articles (:mod:`mlsd_jax.data.news`: documented, seeded
user model with topic preferences, position bias and recency); ``data.path`` reads real MIND
files with the same reader. Training follows MIND's protocol: each click of a training
impression is one sample, scored against ``data.negatives`` non-clicked news of the same
impression with a softmax cross-entropy. Evaluation scores every candidate of every held-out
impression and averages per-impression AUC, MRR, nDCG@5 and nDCG@10 as MIND reports them.

Features: a word vocabulary fitted on the training split's titles (unseen words -> one OOV id),
applied by :class:`TitleTokenizer` in numpy (training) and TensorFlow (the SavedModel) with the
shared tokenizer of :mod:`mlsd_jax.features.text`, so both give the same ids. The exported
signature takes raw title strings: the user's clicked history ``[batch, history]`` and the
candidates ``[batch, candidates]``, ``""`` marking padding; it returns ``scores [batch,
candidates]``.

Evaluation encodes each news of a split once and scores every impression from those vectors
(:func:`news_evaluator`; the same functions as ``forward``, which multi-process runs use).

Baselines scored by the same metric code on the same impressions (``results.json`` ->
``data.baselines``): *popularity* (clicks in the training split, ties by recency) and
*recency* (newest first by the time an article was first shown in the log, ties by
popularity; MIND has no publish times).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlsd_jax.data import news as nd
from mlsd_jax.errors import check
from mlsd_jax.features import text as _text
from mlsd_jax.features.ids import IdMap, fit_id_map, pack_rows
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.metrics.ranking import auc_metric, mind_mrr_metric, ndcg_metric
from mlsd_jax.tasks.base import Serving, Signature, Task
from mlsd_jax.tasks.ctr import bounded_rows

INPUT_KEYS = ("history", "history_mask", "candidates", "candidate_mask")


# ---------------------------------------------------------------------------------- features
@dataclasses.dataclass(frozen=True)
class TitleTokenizer:
    """Title strings (any shape) -> word ids ``[..., max_tokens]`` int32, the same in numpy and
    TensorFlow.

    Words are the tokens of :func:`mlsd_jax.features.text.tokenize_np` / ``tokenize_tf``
    (optionally lowercased), the first ``max_tokens`` of a title. Ids: 0 = padding, 1 = a word
    outside the vocabulary, ``2..`` the vocabulary fitted on training titles (most frequent
    first).
    """

    ids: IdMap
    max_tokens: int
    lowercase: bool = True

    @classmethod
    def fit(cls, titles: Sequence[str], *, max_tokens: int, lowercase: bool = True,
            min_count: int = 1, max_vocab: int | None = None) -> "TitleTokenizer":
        words = [w for t in titles for w in _text.tokenize_np(t, lowercase, max_tokens)]
        ids = fit_id_map("title words", "str", words, missing_values=("",), min_count=min_count,
                         num_oov=1, hash_buckets=None, max_vocab=max_vocab)
        return cls(ids, int(max_tokens), bool(lowercase))

    @property
    def vocab_size(self) -> int:
        """Rows of the word table: padding, OOV and the vocabulary."""
        return self.ids.cardinality

    def encode_np(self, titles) -> np.ndarray:
        arr = np.asarray(titles, dtype=object)
        tokens = [[] if v is None else _text.tokenize_np(v, self.lowercase, self.max_tokens)
                  for v in arr.reshape(-1)]
        lengths = np.fromiter((len(t) for t in tokens), np.int64, len(tokens))
        flat = self.ids.ids_np([w for t in tokens for w in t])
        out, _ = pack_rows(flat, lengths, self.max_tokens)
        return out.reshape(arr.shape + (self.max_tokens,))

    def encode_tf(self, titles):
        import tensorflow as tf
        table = self.tf_module().tables.get("words")
        flat = tf.reshape(titles, [-1])
        tokens = _text.tokenize_tf(flat, self.lowercase, self.max_tokens)
        ids = tf.ragged.map_flat_values(lambda w: self.ids.ids_tf(w, table), tokens)
        dense = ids.to_tensor(default_value=0, shape=[None, self.max_tokens])
        return tf.reshape(tf.cast(dense, tf.int32),
                          tf.concat([tf.shape(titles), [self.max_tokens]], 0))

    def tf_module(self):
        """A ``tf.Module`` owning the vocabulary table (created once, eagerly)."""
        module = self.__dict__.get("_tf_module")
        if module is None:
            import tensorflow as tf
            with tf.init_scope():
                module = tf.Module(name="title_tokenizer")
                module.tables = {"words": self.ids.make_tf_table()}
            object.__setattr__(self, "_tf_module", module)
        return module

    def to_json(self) -> dict:
        return {"ids": self.ids.to_json(), "max_tokens": self.max_tokens,
                "lowercase": self.lowercase, "unicode_version": _text.UNICODE_VERSION}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "TitleTokenizer":
        return cls(IdMap.from_json("title words", obj["ids"]), int(obj["max_tokens"]),
                   bool(obj["lowercase"]))


def _nonempty_np(titles) -> np.ndarray:
    arr = np.asarray(titles, dtype=object)
    return np.vectorize(lambda v: v is not None and len(v) > 0, otypes=[bool])(arr).reshape(
        arr.shape)


def compact_history_np(titles, max_history: int) -> np.ndarray:
    """History titles ``[B, any]`` -> ``[B, max_history]``: the last ``max_history`` non-empty
    titles of each row, left-aligned, ``""`` after them."""
    arr = np.asarray(titles, dtype=object)
    keep = _nonempty_np(arr)
    out = np.full((arr.shape[0], max_history), "", dtype=object)
    for i in range(arr.shape[0]):
        row = arr[i][keep[i]][-max_history:]
        out[i, :len(row)] = row
    return out


def compact_history_tf(titles, max_history: int):
    """TensorFlow twin of :func:`compact_history_np`."""
    import tensorflow as tf
    kept = tf.ragged.boolean_mask(titles, tf.strings.length(titles) > 0)
    return kept[:, -max_history:].to_tensor(default_value="", shape=[None, max_history])


def _encoders(tokenizer: TitleTokenizer, max_history: int):
    def encode_np(raw):
        hist = compact_history_np(raw["history_titles"], max_history)
        cands = np.asarray(raw["candidate_titles"], dtype=object)
        return {"history": tokenizer.encode_np(hist), "history_mask": _nonempty_np(hist),
                "candidates": tokenizer.encode_np(cands), "candidate_mask": _nonempty_np(cands)}

    def encode_tf(raw):
        import tensorflow as tf
        hist = compact_history_tf(raw["history_titles"], max_history)
        cands = raw["candidate_titles"]
        return {"history": tokenizer.encode_tf(hist), "history_mask": tf.strings.length(hist) > 0,
                "candidates": tokenizer.encode_tf(cands),
                "candidate_mask": tf.strings.length(cands) > 0}

    return encode_np, encode_tf


# ------------------------------------------------------------------------------------- model
def forward(apply, consts, inputs, *, train: bool):
    """Word ids of the history and candidates -> NRMS -> ``{"scores": [B, C]}``."""
    scores = apply(inputs["history"], inputs["history_mask"], inputs["candidates"],
                   inputs["candidate_mask"], train=train)
    return {"scores": scores}


def serving(cfg: Mapping[str, Any], features: Mapping[str, Any]) -> Serving:
    """Model, forward and the raw-title signature from config and the fitted tokenizer."""
    import hydra

    tokenizer = TitleTokenizer.from_json(features["tokenizer"])
    max_history = int(features["max_history"])
    model = hydra.utils.instantiate(cfg["model"], vocab_size=tokenizer.vocab_size)
    encode_np, encode_tf = _encoders(tokenizer, max_history)
    t = tokenizer.max_tokens
    signature = Signature(
        inputs={"history_titles": (("batch", "history"), np.str_),
                "candidate_titles": (("batch", "candidates"), np.str_)},
        encoded={"history": (("batch", max_history, t), np.int32),
                 "history_mask": (("batch", max_history), np.bool_),
                 "candidates": (("batch", "candidates", t), np.int32),
                 "candidate_mask": (("batch", "candidates"), np.bool_)},
        outputs={"scores": "float32 [batch, candidates]: higher = more likely clicked (a dot "
                           "product of user and news vectors); '' candidates score -1e9"},
        predict=lambda apply, consts, x: forward(apply, consts, x, train=False),
        encode_np=encode_np, encode_tf=encode_tf, tf_module=tokenizer.tf_module)
    return Serving(model=model, forward=forward, signatures={"serving_default": signature})


# ----------------------------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True)
class ImpressionMean(ms.PerExampleMean):
    """Mean of a per-impression metric over the impressions where it is defined: with a click
    (and, with ``needs_negative``, a non-click) among the valid candidates. MIND's own scorer
    skips nothing because every MIND impression has both."""

    needs_negative: bool = False

    def update(self, outputs, batch, weights):
        valid, labels = batch["candidate_mask"], batch["label"]
        ok = jnp.any(valid & (labels > 0), axis=-1)
        if self.needs_negative:
            ok &= jnp.any(valid & (labels <= 0), axis=-1)
        return super().update(outputs, batch, jnp.where(ok, weights, 0.0))


def _per_impression(fn, outputs, batch):
    return fn(outputs["scores"], batch["label"], where=batch["candidate_mask"], reduce_fn=None)


def news_metrics() -> dict[str, ms.Metric]:
    """AUC, MRR (MIND's: over all clicks), nDCG@5, nDCG@10 per impression, averaged."""
    fns = {"auc": auc_metric, "mrr": mind_mrr_metric,
           "ndcg@5": functools.partial(ndcg_metric, topn=5),
           "ndcg@10": functools.partial(ndcg_metric, topn=10)}
    return {name: ImpressionMean(functools.partial(_per_impression, fn),
                                 needs_negative=name == "auc") for name, fn in fns.items()}


@functools.lru_cache(maxsize=32)
def _jitted_updates(metrics: tuple):
    """One jitted function updating every metric of ``((name, metric), ...)`` (one compile)."""
    return jax.jit(lambda outputs, batch, weights: {k: m.update(outputs, batch, weights)
                                                    for k, m in metrics})


def _merge(metrics: Mapping[str, ms.Metric], acc: dict, states) -> None:
    states = jax.device_get(states)
    for k, m in metrics.items():
        acc[k] = m.merge(acc.get(k), states[k])


def evaluate_scorer(metrics: Mapping[str, ms.Metric], batches, score_fn) -> dict[str, float]:
    """The task's metrics for ``score_fn(batch) -> [B, C]`` over eval ``batches``."""
    update = _jitted_updates(tuple(metrics.items()))
    acc: dict = {}
    for batch in batches:
        outputs = {"scores": np.where(batch["candidate_mask"], score_fn(batch), -1e9)}
        _merge(metrics, acc, update(outputs, {k: batch[k] for k in ("label", "candidate_mask")},
                                    batch["weight"]))
    return {k: m.compute(acc[k]) for k, m in metrics.items()}


def news_evaluator(model, tokens: np.ndarray, splits: Mapping[str, nd.ImpressionSplit],
                   eval_batches: Mapping[str, nd.NewsBatches], metrics: Mapping[str, ms.Metric],
                   batch_size: int, chunk: int = 512):
    """``evaluator(trainer, state, split)``: the task's metrics with every news of the split
    encoded once (``model.encode_news``), then each impression scored from those vectors
    (``model.score_vectors``). Equal to running ``forward`` on every impression (the same
    functions), and many times cheaper: an impression repeats up to ``H + C`` titles that other
    impressions also hold. Multi-process runs use the forward path over the eval batches.
    """
    encode = jax.jit(lambda variables, t: model.apply(variables, t, method="encode_news"))

    @jax.jit
    def score_and_update(variables, history, candidates, label, weight):
        (h, h_mask), (c, c_mask) = history, candidates
        scores = model.apply(variables, h, h_mask, c, c_mask, method="score_vectors")
        batch = {"label": label, "candidate_mask": c_mask}
        return {k: m.update({"scores": scores}, batch, weight) for k, m in metrics.items()}

    def evaluator(trainer, state, split):
        if jax.process_count() > 1:
            return trainer.evaluate_batches(state, eval_batches[split].eval())
        variables, s = state.variables, splits[split]
        used = np.unique(np.concatenate([s.history.ravel(), s.candidates.ravel()]))
        used = used[used > 0]
        vectors = None
        for lo in range(0, len(used), chunk):
            rows = used[lo:lo + chunk]
            block = np.zeros((chunk, tokens.shape[1]), np.int32)
            block[:len(rows)] = tokens[rows]
            out = np.asarray(encode(variables, block))[:len(rows)]
            if vectors is None:
                vectors = np.zeros((len(tokens), out.shape[1]), np.float32)
            vectors[rows] = out
        acc: dict = {}
        for lo in range(0, len(s), batch_size):
            rows = np.arange(lo, lo + batch_size)
            weight = (rows < len(s)).astype(np.float32)
            rows = np.minimum(rows, len(s) - 1)
            hist, cands = s.history[rows], s.candidates[rows]
            _merge(metrics, acc, score_and_update(variables, (vectors[hist], hist > 0),
                                                  (vectors[cands], cands > 0), s.labels[rows],
                                                  weight))
        return {k: m.compute(acc[k]) for k, m in metrics.items()}

    return evaluator


def baseline_scores(data: nd.MindData) -> dict[str, np.ndarray]:
    """Scores per news index of the non-learned baselines.

    ``popularity``: clicks in the training split; ties by recency. ``recency``: newer first by
    the time the news was first shown in any split (a serving system knows when it first showed
    an article; MIND files have no publish times); ties by popularity.
    """
    n = len(data.news)
    clicks = np.zeros(n, np.float64)
    train = data.splits["train"]
    for cands, labs in zip(train.candidates, train.labels):
        np.add.at(clicks, cands[labs > 0], 1.0)
    first = np.full(n, np.iinfo(np.int64).max, np.int64)
    for b in data.splits.values():
        for cands, t in zip(b.candidates, b.time):
            np.minimum.at(first, cands, t)
    fresh = np.argsort(np.argsort(first, kind="stable"), kind="stable") / max(n, 1)
    return {"popularity": clicks + 0.5 * fresh,
            "recency": fresh + 0.5 * clicks / (clicks.max() + 1.0) / max(n, 1)}


# ------------------------------------------------------------------------------------- build
def _load(data_cfg) -> nd.MindData:
    name = data_cfg.get("name", "simulated")
    split_args = dict(valid_users=float(data_cfg.get("valid_users", 0.15)),
                      test_users=float(data_cfg.get("test_users", 0.15)),
                      time_split=float(data_cfg.get("time_split", 0.7)),
                      seed=int(data_cfg.get("seed", 0)))
    if data_cfg.get("path"):
        return nd.load_mind(data_cfg["path"], **split_args)
    if name != "simulated":
        raise ValueError(f"data.name={name!r} needs data.path=<a folder with behaviors.tsv + "
                         f"news.tsv, or MIND's train/ and dev/ folders>")
    sim = dict(data_cfg.get("simulator") or {})
    try:
        model = nd.ClickModel(**sim)
    except TypeError as e:
        raise ValueError(f"data.simulator: {e}; valid keys: "
                         f"{[f.name for f in dataclasses.fields(nd.ClickModel)]}") from None
    return nd.load_mind(nd.simulated_mind(model, data_cfg.get("articles_path")), **split_args)


def _oov_rate(tokenizer: TitleTokenizer, titles: Sequence[str]) -> float:
    ids = tokenizer.encode_np(np.asarray(list(titles), dtype=object))
    words = ids > 0
    return float(np.sum(ids == 1) / max(int(words.sum()), 1))


def _split_news(b: nd.Behaviors) -> np.ndarray:
    parts = [np.concatenate([h, c]) for h, c in zip(b.history, b.candidates)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def build_news_feed_task(cfg: Mapping[str, Any]) -> Task:
    import hydra  # config-time only: forward() and the metrics import without it

    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    max_history = data_cfg.get("max_history", 50)
    max_tokens = data_cfg.get("max_title_tokens", 20)
    negatives = data_cfg.get("negatives", 4)
    for key, value in (("data.max_history", max_history), ("data.max_title_tokens", max_tokens),
                       ("data.negatives", negatives)):
        check(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
    data = _load(data_cfg)
    titles = np.asarray(data.news.title, dtype=object)
    train_news = _split_news(data.splits["train"])
    tokenizer = TitleTokenizer.fit(titles[train_news], max_tokens=max_tokens,
                                   lowercase=bool(data_cfg.get("lowercase", True)),
                                   min_count=int(data_cfg.get("min_word_count", 1)),
                                   max_vocab=data_cfg.get("max_vocab"))
    features = {"tokenizer": tokenizer.to_json(), "max_history": max_history}
    srv = serving(cfg, features)
    tokens = np.concatenate([np.zeros((1, max_tokens), np.int32), tokenizer.encode_np(titles)])
    arrays = {k: nd.ImpressionSplit.from_behaviors(b, max_history) for k, b in data.splits.items()}
    train = nd.NewsBatches(tokens, arrays["train"], int(trainer_cfg["batch_size"]), negatives)
    if len(train.samples) == 0:
        raise ValueError(f"{data.path}: the training split has no impression with both a click "
                         f"and a non-click; nothing to train on")
    evals = {s: nd.NewsBatches(tokens, arrays[s], int(trainer_cfg["eval_batch_size"]), negatives)
             for s in ("valid", "test")}
    loss = hydra.utils.instantiate(cfg["loss"])

    def loss_fn(outputs, batch):
        where = batch["candidate_mask"] & (batch["weight"][:, None] > 0)
        scores = outputs["scores"]
        top = jnp.argmax(jnp.where(where, scores, -jnp.inf), axis=-1)
        hit = jnp.take_along_axis(batch["label"], top[:, None], axis=-1)[:, 0]
        return loss(scores, batch["label"], where=where), {"clicked_ranked_first": jnp.mean(hit)}

    metrics = news_metrics()
    target = task_cfg.get("target_metric", "auc")
    if target not in metrics:
        raise ValueError(f"task.target_metric={target!r}; valid: {sorted(metrics)}")
    example = next(train.train(0))
    info = _info(data, tokenizer, titles, train, evals, metrics, task_cfg)
    evaluator = None
    if hasattr(srv.model, "encode_news") and hasattr(srv.model, "score_vectors"):
        evaluator = news_evaluator(srv.model, tokens, arrays, evals, metrics,
                                   int(trainer_cfg["eval_batch_size"]))
    return Task(
        name="news_feed", model=srv.model, consts={}, forward=srv.forward, loss_fn=loss_fn,
        metrics=metrics, example_weight=lambda batch: batch["weight"],
        train_batches=train.train, eval_splits={s: b.eval for s, b in evals.items()},
        example_batch=example, input_keys=INPUT_KEYS, signatures=srv.signatures,
        serving="mlsd_jax.tasks.news_feed:serving", features=features,
        serving_examples={"serving_default": serving_examples(data, arrays["valid"])},
        target_metric=target, target_mode="max", evaluator=evaluator, info=info,
        # The valid impressions' titles as a client sends them; no labels: clicks are per
        # candidate, not one per row.
        reference_inputs=lambda: raw_inputs(data, arrays["valid"],
                                            bounded_rows(np.arange(len(arrays["valid"])))))


def raw_inputs(data: nd.MindData, split: nd.ImpressionSplit, rows) -> dict[str, np.ndarray]:
    """The serving signature's raw inputs (title strings, ``""`` padding) of impressions."""
    titles = np.asarray([""] + list(data.news.title), dtype=object)
    hist, cands = split.history[rows], split.candidates[rows]
    width = max(1, int((hist > 0).sum(1).max(initial=0)))
    return {"history_titles": titles[hist[:, :width]], "candidate_titles": titles[cands]}


def serving_examples(data: nd.MindData, split: nd.ImpressionSplit) -> dict[str, np.ndarray]:
    """Eight impressions of a split as raw titles, the last with an empty history."""
    raw = raw_inputs(data, split, np.arange(min(8, len(split))))
    raw["history_titles"][-1] = ""
    return raw


def _info(data, tokenizer, titles, train, evals, metrics, task_cfg) -> dict:
    from mlsd_jax.export.bundle import fingerprint

    info: dict[str, Any] = {
        "dataset": "MIND files" if data.simulated is None else "simulated MIND over News Articles",
        "files": data.path,
        "clicks": nd.SIMULATED_NOTE if data.simulated is not None else "from the files",
        "split": data.split_rule, **nd.describe(data),
        "train_samples": int(len(train.samples)), "vocab_size": tokenizer.vocab_size,
        "metric_note": ("per-impression means; AUC skips impressions without both a click and "
                        "a non-click, MRR/nDCG those without a click (MIND impressions all have "
                        "both, so this is MIND's scorer)"),
        "fingerprint": fingerprint(*(np.asarray(b.impression_id, str)
                                     for b in data.splits.values())),
    }
    for s in ("valid", "test"):
        info[f"{s}_oov_word_rate"] = _oov_rate(tokenizer, titles[_split_news(data.splits[s])])
    if data.simulated is not None:
        info.update(articles=nd.ARTICLES_CREDIT, simulation=data.simulated)
    if task_cfg.get("baselines", True):
        tables = baseline_scores(data)
        info["baselines"] = {
            name: {f"{s}/{k}": v for s, b in evals.items()
                   for k, v in evaluate_scorer(metrics, b.eval(), _table_scorer(table)).items()}
            for name, table in tables.items()}
    return info


def _table_scorer(table: np.ndarray):
    padded = np.concatenate([[0.0], table]).astype(np.float32)
    return lambda batch: padded[batch["candidate_news"]]
