"""WordPiece subword ids of a text column, fitted on the training split, the same in numpy and
inside a TensorFlow graph (plain TensorFlow ops: no TensorFlow Text, no lookup-table resource).

Words are the tokens of :func:`mlsd_jax.features.text.tokenize_np` /
:func:`~mlsd_jax.features.text.tokenize_tf` (the first ``max_tokens`` of a text), so both sides
agree on words before any piece is cut. Each word is cut into pieces as BERT does (greedy
longest-match-first): from the word's start, the longest prefix in the vocabulary is the first
piece; from there on, the longest ``"##"``-prefixed substring in the vocabulary is the next
piece, until the word is used up. A word with a position where no piece matches, and a word
longer than ``max_word_chars`` code points, is one ``[UNK]`` piece. The pieces of all words, in
text order, are cut to the first ``max_tokens``; ids are ``1 + `` the piece's row in ``vocab``
and 0 is padding.

The vocabulary is learnt by the ``tokenizers`` library's WordPiece trainer (Hugging Face: BPE
merges of the most frequent adjacent pair, not the likelihood criterion of Google's original
WordPiece) on the words of the training texts. Its result depends on the order its hash map
meets the ``##`` forms of the characters (ties between equally frequent pairs are broken by
token id); :meth:`WordPiece.fit` passes those forms, sorted, as initial tokens, which makes the
vocabulary a function of the word counts alone (the same for any order of the texts, run after
run). The vocabulary holds every character of the training words, and its ``##`` form where it
occurs inside a word, so every training word of at most ``max_word_chars`` can be pieced; it is
larger than ``vocab_size`` when those characters alone are more.

The TensorFlow encoder looks pieces up in a sorted constant of the vocabulary's fingerprints
(``tf.searchsorted``), confirming each hit by comparing the strings, so an exported graph
carries the vocabulary as constants and needs no tracked table.
"""
from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from mlsd_jax.errors import check
from mlsd_jax.features import text as _text
from mlsd_jax.features.hashing import hash_bucket_np, hash_bucket_tf
from mlsd_jax.features.ids import pack_rows

__all__ = ["CONTINUATION", "WordPiece"]

CONTINUATION = "##"
_HASH_RANGE = 2 ** 63 - 1   # fingerprints reduced into int64 for tf.searchsorted


@dataclasses.dataclass(frozen=True)
class WordPiece:
    """WordPiece ids ``[batch, max_tokens]`` int32 of the text column ``column`` (0 = padding).

    Declare it with an empty ``vocab`` and :meth:`fit` it on the training texts. ``name``:
    the output key (default ``"<column>/wordpiece"``). ``vocab``:
    the pieces (continuations start with ``"##"``), id ``i + 1`` for ``vocab[i]``; it holds
    ``unk_token``. Words longer than ``max_word_chars`` code points become ``[UNK]`` (as BERT
    does), as do words with a position no piece matches.
    """

    column: str
    vocab: tuple = ()
    name: Optional[str] = None
    max_tokens: int = 96
    max_word_chars: int = 100
    lowercase: bool = True
    unk_token: str = "[UNK]"

    def __post_init__(self):
        what = f"WordPiece {self.column!r}"
        check(isinstance(self.column, str) and bool(self.column), f"{what}.column", self.column,
              "a non-empty column name")
        object.__setattr__(self, "vocab", tuple(self.vocab))
        for name in ("max_tokens", "max_word_chars"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"{what}.{name}", value, "an integer >= 1")
        check(self.name is None or (isinstance(self.name, str) and bool(self.name)),
              f"{what}.name", self.name, "None or a non-empty output key")
        check(isinstance(self.unk_token, str) and bool(self.unk_token), f"{what}.unk_token",
              self.unk_token, "a non-empty string")
        if not self.vocab:
            return
        bad = [p for p in self.vocab
               if not isinstance(p, str) or p in ("", CONTINUATION)]
        check(not bad, f"{what}.vocab", bad[:3], "non-empty strings (a continuation is '##' "
              "and at least one character)")
        check(len(set(self.vocab)) == len(self.vocab), f"{what}.vocab",
              sorted(p for p, n in collections.Counter(self.vocab).items() if n > 1)[:3],
              "distinct pieces")
        check(self.unk_token in self.vocab, f"{what}.vocab", f"{len(self.vocab)} pieces",
              f"a vocabulary holding the unknown token {self.unk_token!r}")
        ids = {p: i + 1 for i, p in enumerate(self.vocab)}
        object.__setattr__(self, "_ids", ids)
        object.__setattr__(self, "_cache", {})
        longest = max((len(_bare(p)) for p in self.vocab if p != self.unk_token), default=1)
        object.__setattr__(self, "_span", max(1, min(longest, self.max_word_chars)))

    # ---- fitting ----------------------------------------------------------------------------
    def fit(self, texts: Iterable, vocab_size: int) -> "WordPiece":
        """A copy with the vocabulary learnt from ``texts`` (the training split's column).

        Deterministic: the same word counts give the same vocabulary (no seed, any order).
        Words are those the encoder sees (the first ``max_tokens`` of each text, at most
        ``max_word_chars`` code points); missing values (None) count as empty texts.
        """
        from tokenizers import Tokenizer, models, trainers

        what = f"WordPiece {self.column!r}"
        check(isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
              and vocab_size >= 10, f"{what}.fit vocab_size", vocab_size, "an integer >= 10")
        counts: collections.Counter = collections.Counter()
        for t in texts:
            counts.update(w for w in _text.tokenize_np("" if t is None else t, self.lowercase,
                                                       self.max_tokens)
                          if len(w) <= self.max_word_chars)
        check(len(counts) > 0, f"{what}.fit texts", "no words", "training texts with words")
        continued = sorted({c for w in counts for c in w[1:]})
        specials = [self.unk_token] + [CONTINUATION + c for c in continued]
        tok = Tokenizer(models.WordPiece(unk_token=self.unk_token,
                                         max_input_chars_per_word=self.max_word_chars))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                            continuing_subword_prefix=CONTINUATION,
                                            show_progress=False)
        # One item per occurrence, in a fixed order; each item is one word (no pre-tokenizer).
        words = (w for w in sorted(counts) for _ in range(counts[w]))
        tok.train_from_iterator(words, trainer=trainer, length=sum(counts.values()))
        learnt = tok.get_vocab(with_added_tokens=True)
        vocab = tuple(sorted(learnt, key=learnt.__getitem__))
        assert [learnt[p] for p in vocab] == list(range(len(vocab))), "non-contiguous ids"
        return dataclasses.replace(self, vocab=vocab)

    def tokenizers_model(self):
        """The same vocabulary as a ``tokenizers.models.WordPiece`` (its ids are ours - 1)."""
        from tokenizers import models

        self._fitted()
        return models.WordPiece({p: i for i, p in enumerate(self.vocab)},
                                unk_token=self.unk_token,
                                max_input_chars_per_word=self.max_word_chars,
                                continuing_subword_prefix=CONTINUATION)

    # ---- shapes -------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """The output key: ``name``, by default ``"<column>/wordpiece"``."""
        return self.name if self.name is not None else f"{self.column}/wordpiece"

    @property
    def width(self) -> int:
        return self.max_tokens

    @property
    def cardinality(self) -> int:
        """Embedding rows: the pieces plus padding (id 0)."""
        return 1 + len(self._fitted())

    @property
    def unk_id(self) -> int:
        return self._fitted().index(self.unk_token) + 1

    def _fitted(self) -> tuple:
        if not self.vocab:
            raise ValueError(f"WordPiece {self.column!r}: no vocabulary; call fit(texts, "
                             "vocab_size) on the training split first")
        return self.vocab

    # ---- numpy ------------------------------------------------------------------------------
    def pieces(self, word: str) -> list[int]:
        """Ids of one word's pieces (greedy longest-match-first, ``[UNK]`` if it fails)."""
        self._fitted()
        cache = self._cache
        out = cache.get(word)
        if out is not None:
            return out
        ids, n = self._ids, len(word)
        if n > self.max_word_chars:
            out = [self.unk_id]
        else:
            out, start = [], 0
            while start < n:
                for end in range(min(n, start + self._span), start, -1):
                    piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                    if piece in ids:
                        out.append(ids[piece])
                        start = end
                        break
                else:
                    out = [self.unk_id]
                    break
        if len(cache) < 1_000_000:
            cache[word] = out
        return out

    def encode_np(self, values) -> np.ndarray:
        """Raw texts ``[batch]`` (str, UTF-8 bytes or None) -> int32 ids ``[batch, max_tokens]``."""
        self._fitted()
        rows = [("" if v is None else v) for v in np.asarray(values, dtype=object).reshape(-1)]
        per_row = []
        for r in rows:
            ids: list[int] = []
            for w in _text.tokenize_np(r, self.lowercase, self.max_tokens):
                ids.extend(self.pieces(w))
                if len(ids) >= self.max_tokens:
                    break
            per_row.append(ids[:self.max_tokens])
        lengths = np.fromiter((len(r) for r in per_row), np.int64, len(per_row))
        flat = np.fromiter((i for r in per_row for i in r), np.int64, int(lengths.sum()))
        return pack_rows(flat, lengths, self.width)[0]

    def decode(self, ids) -> list[list[str]]:
        """Ids ``[batch, L]`` -> the words they spell per row (``##`` pieces joined to the word
        before; padding skipped; ``[UNK]`` stays a word)."""
        vocab = self._fitted()
        out = []
        for row in np.asarray(ids).reshape(len(ids), -1):
            words: list[str] = []
            for i in row.tolist():
                if i <= 0:
                    continue
                piece = vocab[i - 1]
                if piece.startswith(CONTINUATION) and words and piece != self.unk_token:
                    words[-1] += piece[len(CONTINUATION):]
                else:
                    words.append(piece)
            out.append(words)
        return out

    # ---- TensorFlow -------------------------------------------------------------------------
    def encode_tf(self, x):
        """TensorFlow twin of :meth:`encode_np`: string tensor ``[batch]`` -> int32
        ``[batch, max_tokens]`` (traceable with or without AutoGraph)."""
        import tensorflow as tf

        self._fitted()
        words = _text.tokenize_tf(x, self.lowercase, self.max_tokens)
        pieces = self._pieces_tf(words.flat_values)                      # [words, (pieces)]
        per_text = tf.RaggedTensor.from_row_splits(pieces, words.row_splits, validate=False)
        ids = per_text.merge_dims(1, 2)[:, :self.max_tokens]
        return tf.cast(ids.to_tensor(default_value=0, shape=[None, self.width]), tf.int32)

    def _pieces_tf(self, flat):
        """Words ``[F]`` -> ragged piece ids ``[F, (pieces)]``, vectorised over the words: one
        loop step cuts the next piece of every unfinished word (at most ``max_word_chars``)."""
        import tensorflow as tf

        vocab = np.asarray(self.vocab, object)
        hashes = hash_bucket_np(self.vocab, _HASH_RANGE)
        order = np.argsort(hashes, kind="stable")
        if np.any(np.diff(hashes[order]) == 0):  # ~1e-11 for 10^4 pieces; then refuse
            raise ValueError(f"WordPiece {self.column!r}: two pieces share a fingerprint")
        sorted_hashes = tf.constant(hashes[order], tf.int64)
        sorted_pieces = tf.constant([p.encode("utf-8") for p in vocab[order]], tf.string)
        sorted_ids = tf.constant(order.astype(np.int32) + 1, tf.int32)
        span = self._span
        lengths = tf.range(1, span + 1, dtype=tf.int32)                       # [K]

        def lookup(cand):                                                     # [A, K] -> ids
            h = hash_bucket_tf(cand, _HASH_RANGE)
            flat_h = tf.reshape(h, [-1])
            idx = tf.minimum(tf.searchsorted(sorted_hashes, flat_h, side="left",
                                             out_type=tf.int32), len(self.vocab) - 1)
            idx = tf.reshape(idx, tf.shape(h))
            hit = tf.logical_and(tf.equal(tf.gather(sorted_hashes, idx), h),
                                 tf.equal(tf.gather(sorted_pieces, idx), cand))
            return tf.where(hit, tf.gather(sorted_ids, idx), -1)

        n = tf.strings.length(flat, unit="UTF8_CHAR")
        f = tf.shape(flat)[0]
        too_long = n > self.max_word_chars
        start = tf.zeros([f], tf.int32)
        failed = too_long
        done = tf.logical_or(too_long, n <= 0)
        out = tf.zeros([f, 0], tf.int32)

        def step(i, start, failed, done, out):
            act = tf.cast(tf.where(tf.logical_not(done))[:, 0], tf.int32)   # [A]
            word, s, m = tf.gather(flat, act), tf.gather(start, act), tf.gather(n, act)
            pos = tf.broadcast_to(s[:, None], [tf.shape(act)[0], span])
            cand = tf.strings.substr(tf.broadcast_to(word[:, None], tf.shape(pos)), pos,
                                     tf.broadcast_to(lengths[None, :], tf.shape(pos)),
                                     unit="UTF8_CHAR")
            cand = tf.where(pos > 0, tf.strings.join([CONTINUATION, cand]), cand)
            ids = tf.where(pos + lengths[None, :] <= m[:, None], lookup(cand), -1)
            best = tf.reduce_max(tf.where(ids >= 0, lengths[None, :], 0), axis=1)  # [A]
            piece = tf.gather(ids, tf.maximum(best - 1, 0), batch_dims=1)
            col = tf.tensor_scatter_nd_update(tf.fill([f], -1), act[:, None],
                                              tf.where(best > 0, piece, -1))
            start = tf.tensor_scatter_nd_add(start, act[:, None], best)
            failed = tf.tensor_scatter_nd_update(failed, act[:, None],
                                                 tf.logical_or(tf.gather(failed, act),
                                                               best <= 0))
            done = tf.logical_or(failed, start >= n)
            return i + 1, start, failed, done, tf.concat([out, col[:, None]], axis=1)

        _, _, failed, _, out = tf.while_loop(
            lambda i, start, failed, done, out: tf.reduce_any(tf.logical_not(done)),
            step, (tf.constant(0), start, failed, done, out),
            shape_invariants=(tf.TensorShape([]), start.shape, failed.shape, done.shape,
                              tf.TensorShape([None, None])),
            maximum_iterations=self.max_word_chars)
        out = tf.concat([out, tf.fill([f, 1], -1)], axis=1)   # at least one column for [UNK]
        first = tf.equal(tf.range(tf.shape(out)[1]), 0)[None, :]
        out = tf.where(failed[:, None], tf.where(first, self.unk_id, -1), out)
        return tf.ragged.boolean_mask(out, out >= 0)

    # ---- persistence ------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"type": "WordPiece", **dataclasses.asdict(self), "vocab": list(self.vocab),
                "unicode_version": _text.UNICODE_VERSION}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "WordPiece":
        if obj.get("type", "WordPiece") != "WordPiece":
            raise ValueError(f"WordPiece.from_json: type {obj.get('type')!r}, expected "
                             "'WordPiece'")
        saved = obj.get("unicode_version")
        if saved is not None and saved != _text.UNICODE_VERSION:
            warnings.warn(f"WordPiece {obj.get('column')!r} was fitted with Unicode {saved}, "
                          f"this Python has {_text.UNICODE_VERSION}: tokens of characters "
                          "assigned in between may differ from training", stacklevel=2)
        kw = {f.name: obj[f.name] for f in dataclasses.fields(cls)}
        return cls(**{**kw, "vocab": tuple(kw["vocab"])})


def _bare(piece: str) -> str:
    return piece[len(CONTINUATION):] if piece.startswith(CONTINUATION) else piece
