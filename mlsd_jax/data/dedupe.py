"""Duplicate and near-duplicate detection for text, and group-aware stratified splits.

Text corpora scraped from mailboxes and comment threads hold many copies of one message (the
same spam sent to many addresses, a comment posted twice, a forwarded mail with one changed
line). A copy on each side of a train/test split inflates test scores, so:

* **Exact duplicates**: documents whose *normalised* text (lower case, every run of whitespace
  one space, stripped) is the same, compared by its sha1. Documents with no words are never
  duplicates of each other (an empty body says nothing about the message).
* **Near duplicates**: documents whose sets of word ``shingle``-grams (5 by default) have a
  Jaccard similarity of at least ``threshold`` (0.9). Candidates come from MinHash signatures
  (``num_perm`` random permutations of 64-bit shingle ids, numpy) bucketed by
  locality-sensitive hashing in ``bands`` bands; each candidate pair's Jaccard similarity is
  then computed exactly on the shingle sets (each shingle a 64-bit hash of its words, so a
  false match needs a 64-bit collision), so every reported pair really is at or above the
  threshold. A document with fewer words than ``shingle`` has its whole word sequence as its
  one shingle. LSH may miss a pair at the threshold with a small probability (with 128
  permutations in 16 bands of 8, a pair of Jaccard 0.9 becomes a candidate with probability
  1 - (1 - 0.9^8)^16 > 0.9998, higher for more similar pairs).
* **Clusters**: exact and near-duplicate pairs are joined transitively (union-find); each
  cluster has an id, the smallest member index.

:func:`group_stratified_split` then splits rows so that every cluster lies on one side and
each split keeps the label ratio (stratified by each cluster's majority label), seeded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "DedupeReport",
    "find_duplicates",
    "group_stratified_split",
    "normalise_text",
    "split_summary",
]

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise_text(text: str) -> str:
    """Lower case, every run of whitespace one space, stripped (the exact-duplicate key)."""
    return " ".join(str(text).lower().split())


@dataclasses.dataclass
class DedupeReport:
    """What :func:`find_duplicates` found.

    ``exact_of[i]``: the index of the first document with the same normalised text, or ``-1``
    when ``i`` is the first (or has no words). ``cluster[i]``: the cluster id (smallest member
    index) joining exact and near duplicates. ``near_pairs``: ``(i, j, jaccard)`` of the verified
    near-duplicate pairs between distinct exact groups' first members.
    """

    n_documents: int
    exact_of: np.ndarray
    cluster: np.ndarray
    near_pairs: list
    n_exact_duplicates: int
    n_near_duplicate_pairs: int
    n_clusters_multi: int
    n_in_multi_clusters: int
    n_empty: int
    label_conflicts: int = 0
    params: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts only (no arrays), for logs and reports."""
        return {"documents": self.n_documents, "exact_duplicates": self.n_exact_duplicates,
                "near_duplicate_pairs": self.n_near_duplicate_pairs,
                "clusters_with_copies": self.n_clusters_multi,
                "documents_in_those_clusters": self.n_in_multi_clusters,
                "documents_without_words": self.n_empty,
                "clusters_with_both_labels": self.label_conflicts, **self.params}


def _shingle_ids(word_ids: np.ndarray, word_hash: np.ndarray, k: int) -> np.ndarray:
    """Sorted unique 64-bit ids of a document's word ``k``-grams (fewer words: one id)."""
    h = word_hash[word_ids]
    if len(h) < k:
        k = len(h)
    out = np.zeros(len(h) - k + 1, np.uint64)
    for j in range(k):  # a polynomial hash of the k words, wrapping in uint64
        out = out * np.uint64(0x100000001B3) + h[j:len(h) - k + 1 + j]
    return np.unique(out)


def _minhash(shingle_ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signature: min over shingles of ``a * x + b`` (mod 2^64) per permutation.

    With odd ``a`` each map is a bijection of the 64-bit ids (a permutation), so two sets share
    a minimum with probability close to their Jaccard similarity; LSH only needs that much,
    as every candidate pair is checked exactly afterwards.
    """
    return (a[None, :] * shingle_ids[:, None] + b[None, :]).min(axis=0)


def find_duplicates(texts: Sequence[str], labels: Sequence[int] | None = None, *,
                    threshold: float = 0.9, shingle: int = 5, num_perm: int = 128,
                    bands: int = 16, seed: int = 0) -> DedupeReport:
    """Exact and near duplicates among ``texts`` (see the module docstring).

    ``labels`` (optional) count clusters whose members carry different labels. ``threshold``
    must lie in (0, 1]; ``num_perm`` must be a multiple of ``bands``.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r}: expected a Jaccard similarity in (0, 1]")
    if shingle < 1:
        raise ValueError(f"shingle={shingle!r}: expected a word n-gram length >= 1")
    if num_perm < 1 or bands < 1 or num_perm % bands:
        raise ValueError(f"num_perm={num_perm}, bands={bands}: expected num_perm a positive "
                         f"multiple of bands")
    n = len(texts)
    norm = [normalise_text(t) for t in texts]
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    exact_of = np.full(n, -1, np.int64)
    first: dict[bytes, int] = {}
    empty = 0
    reps = []
    for i, t in enumerate(norm):
        if not _WORD.search(t):
            empty += 1
            continue
        key = hashlib.sha1(t.encode("utf-8")).digest()
        j = first.setdefault(key, i)
        if j != i:
            exact_of[i] = j
            union(i, j)
        else:
            reps.append(i)

    rng = np.random.default_rng(seed)
    top = np.iinfo(np.uint64).max
    a = rng.integers(0, top, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, top, size=num_perm, dtype=np.uint64, endpoint=True)
    vocab: dict[str, int] = {}
    docs = [np.asarray([vocab.setdefault(w, len(vocab)) for w in _WORD.findall(norm[i])],
                       np.int64) for i in reps]
    word_hash = rng.integers(0, np.iinfo(np.uint64).max, size=max(len(vocab), 1),
                             dtype=np.uint64, endpoint=True)
    sets: dict[int, np.ndarray] = {}
    sigs = np.zeros((len(reps), num_perm), np.uint64)
    for r, i in enumerate(reps):
        sets[i] = _shingle_ids(docs[r], word_hash, shingle)
        sigs[r] = _minhash(sets[i], a, b)

    rows = num_perm // bands
    candidates: set[tuple[int, int]] = set()
    mix = rng.integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
    for band in range(bands):
        block = sigs[:, band * rows:(band + 1) * rows]
        # One 64-bit key per band (a collision only adds candidates; they are checked exactly).
        keys = np.bitwise_xor.reduce(block * mix[None, :], axis=1) if len(reps) else block[:, 0]
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        for start, count in zip(starts[counts > 1], counts[counts > 1]):
            members = sorted(reps[k] for k in order[start:start + count])
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((members[x], members[y]))
    near = []
    for i, j in sorted(candidates):
        si, sj = sets[i], sets[j]
        inter = len(np.intersect1d(si, sj, assume_unique=True))
        jac = inter / (len(si) + len(sj) - inter)
        if jac >= threshold:
            near.append((i, j, round(jac, 4)))
            union(i, j)

    cluster = np.asarray([find(i) for i in range(n)], np.int64)
    ids, counts = np.unique(cluster, return_counts=True)
    multi = ids[counts > 1]
    conflicts = 0
    if labels is not None:
        lab = np.asarray(labels)
        if len(lab) != n:
            raise ValueError(f"labels has {len(lab)} entries; expected one per text ({n})")
        for c in multi:
            if np.unique(lab[cluster == c]).size > 1:
                conflicts += 1
    return DedupeReport(
        n_documents=n, exact_of=exact_of, cluster=cluster, near_pairs=near,
        n_exact_duplicates=int((exact_of >= 0).sum()), n_near_duplicate_pairs=len(near),
        n_clusters_multi=int(multi.size), n_in_multi_clusters=int(counts[counts > 1].sum()),
        n_empty=empty, label_conflicts=conflicts,
        params={"threshold": threshold, "shingle": shingle, "num_perm": num_perm,
                "bands": bands})


def group_stratified_split(labels: Sequence[int], groups: Sequence[int],
                           fractions: Mapping[str, float] | None = None, seed: int = 0,
                           rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Seeded split of ``rows`` (default: all) that keeps every group on one side.

    ``fractions`` maps split names to weights (default ``{"train": 0.7, "valid": 0.1,
    "test": 0.2}``), normalised to sum to 1. Groups are stratified by their majority label
    (ties: the larger label): within each label the groups are permuted with ``seed`` and laid
    end to end, and a group goes to the split whose share of the label's rows its middle row
    falls in. Each split then holds close to its fraction of every label (up to one group's
    size). Returns sorted int64 row indices per split, in the order of ``fractions``.
    """
    fractions = dict(fractions or {"train": 0.7, "valid": 0.1, "test": 0.2})
    w = np.asarray(list(fractions.values()), np.float64)
    if w.size == 0 or np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"split fractions {fractions}: expected non-negative weights with a "
                         f"positive sum")
    w = w / w.sum()
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape != groups.shape:
        raise ValueError(f"labels {labels.shape} and groups {groups.shape}: expected one group "
                         f"per label")
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows, np.int64)
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups[rows], return_inverse=True)
    members = [[] for _ in uniq]
    for r, g in zip(rows, inverse):
        members[g].append(int(r))
    group_label = []
    for m in members:
        vals, cnt = np.unique(labels[m], return_counts=True)
        group_label.append(vals[np.flatnonzero(cnt == cnt.max())[-1]])
    group_label = np.asarray(group_label)
    bounds = np.cumsum(w)
    out: dict[str, list[int]] = {k: [] for k in fractions}
    names = list(fractions)
    for lab in np.unique(group_label):
        gs = rng.permutation(np.flatnonzero(group_label == lab))
        sizes = np.asarray([len(members[g]) for g in gs], np.float64)
        total = sizes.sum()
        mid = (np.cumsum(sizes) - sizes / 2) / total
        which = np.searchsorted(bounds, mid, side="right").clip(max=len(names) - 1)
        for g, k in zip(gs, which):
            out[names[k]].extend(members[g])
    return {k: np.sort(np.asarray(v, np.int64)) for k, v in out.items()}


def split_summary(labels: Sequence[int], parts: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Rows and positive-label rate per split."""
    labels = np.asarray(labels)
    return {k: {"rows": int(len(v)),
                "positive_rate": float(labels[v].mean()) if len(v) else float("nan")}
            for k, v in parts.items()}
