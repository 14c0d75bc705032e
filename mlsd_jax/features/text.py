"""Text normalisation and tokenisation that Python and TensorFlow compute identically.

Rules (both sides, from the same tables, so they agree code point for code point):

1. Bytes are decoded as UTF-8; invalid sequences become U+FFFD (Python's ``errors="replace"``
   and ``tf.strings.unicode_decode(errors="replace")`` replace the same maximal subparts).
2. Lowercasing (optional) maps each code point through one table: the simple lowercase of
   Python's ``unicodedata`` (for the only multi-character case, U+0130 ``İ``, its first character
   ``i``). TensorFlow applies the same table with ``searchsorted``; ``tf.strings.lower`` is not
   used because its ICU tables can differ from Python's.
3. Symbols (categories Sm, Sc, Sk, So: emoji, currency, math) and CJK ideographs are tokens of
   their own (a space is put on both sides).
4. Separators (categories Z*, Cc, Cf, P*, and variation selectors) become spaces; the text is
   split on spaces. Everything else (letters, marks, digits, private use) forms words.

The tables come from the running Python's Unicode database (``unicodedata.unidata_version``);
the TensorFlow side embeds them as constants when traced, so an exported SavedModel keeps the
tables it was exported with. Training and export under Pythons with different Unicode versions
can disagree only on characters assigned in between.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from typing import Sequence

import numpy as np

__all__ = ["UNICODE_VERSION", "char_ngrams_np", "char_ngrams_tf", "lowercase_table", "ngrams_np",
           "normalize_np", "normalize_tf", "num_char_ngrams", "num_ngrams", "tokenize_np",
           "tokenize_tf"]

UNICODE_VERSION = unicodedata.unidata_version

_SEP_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf",
                             "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"})
_SYMBOL_CATEGORIES = frozenset({"Sm", "Sc", "Sk", "So"})
# Variation selectors (category Mn) would otherwise glue to the emoji before them.
_EXTRA_SEPARATORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))
# CJK ideograph blocks (as BERT's basic tokenizer), written without spaces between words.
_CJK_BLOCKS = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
               (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0x2F800, 0x2FA1F))
_CJK_MIN = chr(_CJK_BLOCKS[0][0])


def _ranges(codepoints: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted code points -> inclusive ``(start, end)`` runs."""
    out: list[list[int]] = []
    for c in codepoints:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [(a, b) for a, b in out]


# Planes 4-13 hold no assigned characters and planes 15-16 are private use (word characters).
_SCANNED = (range(0x40000), range(0xE0000, 0xE1000))


@functools.lru_cache(maxsize=None)
def _classes() -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(separator ranges, isolated-character ranges) from the Unicode database."""
    category = unicodedata.category
    codepoints = [c for r in _SCANNED for c in r]
    cats = [category(chr(c)) for c in codepoints]
    extra = {c for a, b in _EXTRA_SEPARATORS for c in range(a, b + 1)}
    cjk = {c for a, b in _CJK_BLOCKS for c in range(a, b + 1)}
    sep = [c for c, k in zip(codepoints, cats) if k in _SEP_CATEGORIES or c in extra]
    iso = [c for c, k in zip(codepoints, cats)
           if k in _SYMBOL_CATEGORIES or (k == "Lo" and c in cjk)]
    return tuple(_ranges(sep)), tuple(_ranges(iso))


@functools.lru_cache(maxsize=None)
def lowercase_table() -> tuple[np.ndarray, np.ndarray]:
    """Sorted code points that change under lowercasing and their lowercase (int32 arrays)."""
    keys, values = [], []
    for c in range(0x20000):  # no cased letters above the SMP
        low = chr(c).lower()
        if low != chr(c):
            keys.append(c)
            values.append(ord(low[0]))
    return np.asarray(keys, np.int32), np.asarray(values, np.int32)


def _py_class(ranges) -> str:
    esc = lambda c: f"\\U{c:08x}"  # noqa: E731
    return "[" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]"


def _re2_class(ranges) -> str:
    esc = lambda c: f"\\x{{{c:x}}}"  # noqa: E731
    return "[" + "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges) + "]"


@functools.lru_cache(maxsize=None)
def _py_tables(lowercase: bool) -> tuple[dict, "re.Pattern"]:
    """One ``str.translate`` table doing steps 2-4 except CJK, and a regex isolating CJK.

    The table maps a code point to ``" "`` (separator), ``" c "`` (symbol) or its lowercase,
    judged after lowercasing as TensorFlow does. CJK ideographs (90k code points) stay out of
    the table and go through a small regex instead.
    """
    sep, iso = _classes()
    cjk = {c for a, b in _CJK_BLOCKS for c in range(a, b + 1)}
    is_sep = {c for a, b in sep for c in range(a, b + 1)}
    is_iso = {c for a, b in iso for c in range(a, b + 1)} - cjk

    def out(c: int) -> str:
        return " " if c in is_sep else f" {chr(c)} " if c in is_iso else chr(c)

    table = {c: out(c) for c in is_sep | is_iso}
    if lowercase:
        keys, values = lowercase_table()
        table.update({k: out(v) for k, v in zip(keys.tolist(), values.tolist())})
    cjk_class = _py_class(_ranges(sorted(cjk & {c for a, b in iso for c in range(a, b + 1)})))
    return table, re.compile(cjk_class)


@functools.lru_cache(maxsize=None)
def _re2_patterns() -> tuple[str, str]:
    sep, iso = _classes()
    return _re2_class(sep) + "+", _re2_class(iso)


def _as_text(value) -> str:
    """A raw value as valid Unicode text, decoding as TensorFlow does (invalid -> U+FFFD)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value.isascii():
        return value
    try:  # a valid string is its own decoding; lone surrogates take the bytes they stand for
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "replace")


def normalize_np(value, lowercase: bool) -> str:
    """Lowercases (optionally) and puts spaces around tokens (see module docstring)."""
    table, cjk = _py_tables(bool(lowercase))
    s = _as_text(value).translate(table)
    if not s.isascii() and max(s) >= _CJK_MIN:
        s = cjk.sub(r" \g<0> ", s)
    return s


def tokenize_np(value, lowercase: bool, max_tokens: int | None = None) -> list[str]:
    """The first ``max_tokens`` tokens of one text."""
    tokens = [t for t in normalize_np(value, lowercase).split(" ") if t]
    return tokens[:max_tokens] if max_tokens is not None else tokens


def ngrams_np(tokens: Sequence[str], widths: Sequence[int]) -> list[str]:
    """Word n-grams joined by a space, all of the first width then the next (tf.strings.ngrams)."""
    out: list[str] = []
    for n in widths:
        out.extend(tokens if n == 1 else map(" ".join, zip(*(tokens[i:] for i in range(n)))))
    return out


def num_ngrams(max_tokens: int, widths: Sequence[int]) -> int:
    """The most n-grams a text of ``max_tokens`` tokens gives."""
    return sum(max(0, max_tokens - n + 1) for n in widths)


def normalize_tf(strings, lowercase: bool):
    """TensorFlow twin of :func:`normalize_np` on a string tensor of any shape."""
    import tensorflow as tf
    sep, iso = _re2_patterns()
    cps = tf.strings.unicode_decode(strings, "UTF-8", errors="replace")
    if lowercase:
        keys, values = lowercase_table()

        def lower(flat):
            k = tf.constant(keys)
            idx = tf.searchsorted(k, flat, side="left")
            idx = tf.minimum(idx, len(keys) - 1)
            hit = tf.equal(tf.gather(k, idx), flat)
            return tf.where(hit, tf.gather(tf.constant(values), idx), flat)

        cps = tf.ragged.map_flat_values(lower, cps)
    s = tf.strings.unicode_encode(cps, "UTF-8")
    s = tf.strings.regex_replace(s, iso, r" \0 ")
    return tf.strings.regex_replace(s, sep, " ")


def tokenize_tf(strings, lowercase: bool, max_tokens: int | None = None):
    """TensorFlow twin of :func:`tokenize_np`: strings ``[batch]`` -> ragged tokens."""
    import tensorflow as tf
    tokens = tf.strings.split(normalize_tf(strings, lowercase), sep=" ")
    tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
    return tokens[:, :max_tokens] if max_tokens is not None else tokens


def char_ngrams_np(tokens: Sequence[str], widths: Sequence[int], max_chars: int) -> list[str]:
    """Character n-grams inside word boundaries (as scikit-learn's ``char_wb``, without its
    special case for short words): each token is cut to its first ``max_chars`` code points and
    padded with one space on each side; per token, all n-grams of the first width, then the
    next. A padded token shorter than a width gives no n-gram of that width."""
    out: list[str] = []
    for t in tokens:
        p = " " + t[:max_chars] + " "
        for n in widths:
            out.extend(p[i:i + n] for i in range(len(p) - n + 1))
    return out


def num_char_ngrams(max_tokens: int, widths: Sequence[int], max_chars: int) -> int:
    """The most character n-grams :func:`char_ngrams_np` gives for ``max_tokens`` tokens."""
    return max_tokens * sum(max(0, max_chars + 2 - n + 1) for n in widths)


def char_ngrams_tf(tokens, widths: Sequence[int], max_chars: int):
    """TensorFlow twin of :func:`char_ngrams_np`: ragged tokens ``[batch, (tokens)]`` -> ragged
    character n-grams ``[batch, (ngrams)]`` in the same order."""
    import tensorflow as tf

    def pad(flat):
        cut = tf.strings.substr(flat, 0, max_chars, unit="UTF8_CHAR")
        return tf.strings.join([" ", cut, " "])

    chars = tf.strings.unicode_split(tf.ragged.map_flat_values(pad, tokens), "UTF-8")
    grams = tf.strings.ngrams(chars, ngram_width=tuple(widths), separator="")
    return grams.merge_dims(1, 2)
