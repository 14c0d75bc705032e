import json

import numpy as np
import pytest

from mlsd_jax.data import letor
from mlsd_jax.data.letor import LetorFormatError, QueryStore, build_query_store, open_letor, parse_letor_lines
from mlsd_jax.data.ranking import load_ranking_splits


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))


def _mslr_lines(rng, qids, docs_per_query=3, F=136):
    """Dense MSLR-WEB10K style lines (all 136 features, trailing space + CRLF)."""
    lines, X, y, q = [], [], [], []
    for qid in qids:
        for _ in range(docs_per_query):
            x = np.round(rng.normal(size=F) * 10, 6).astype(np.float32)
            x[rng.random(F) < 0.3] = 0
            x[5] = float(rng.integers(0, 70000))
            label = int(rng.integers(0, 5))
            body = " ".join(f"{j + 1}:{float(v)!r}" for j, v in enumerate(x))
            lines.append(f"{label} qid:{qid} {body} \r\n")
            X.append(x), y.append(label), q.append(qid)
    return lines, np.array(X, np.float32), np.array(y, np.float32), np.array(q)


def _write(path, lines):
    path.write_bytes("".join(lines).encode())
    return path


def test_mslr_dense_lines_parse_exactly(tmp_path):
    rng = np.random.default_rng(0)
    lines, X, y, q = _mslr_lines(rng, [10, 11, 7])
    path = _write(tmp_path / "mslr.txt", lines)
    store = build_query_store(path, tmp_path / "store", num_features=136)
    assert len(store) == 3 and store.num_features == 136 and store.n_docs == 9
    np.testing.assert_array_equal(store.list_sizes, [3, 3, 3])
    np.testing.assert_array_equal(store.qids, [10, 11, 7])
    for i in range(3):
        f, l = store.query(i)
        assert f.dtype == np.float32 and l.dtype == np.float32 and f.shape == (3, 136)
        np.testing.assert_array_equal(f, X[3 * i:3 * i + 3])
        np.testing.assert_array_equal(l, y[3 * i:3 * i + 3])


MQ2007 = [
    "2 qid:10032 1:0.056537 2:0.000000 3:0.666667 4:1.000000 5:0.067138 6:0.000000 7:0.000000 8:0.000000 "
    "9:0.000000 10:0.000000 11:0.000000 12:0.000000 13:0.000000 14:0.000000 15:0.000000 16:0.000000 "
    "17:0.000000 18:0.000000 19:0.000000 20:0.000000 21:0.056537 22:0.000000 23:0.666667 24:1.000000 "
    "25:0.067138 26:0.000000 27:0.000000 28:0.000000 29:0.000000 30:0.000000 31:0.000000 32:0.000000 "
    "33:0.000000 34:0.000000 35:0.000000 36:0.000000 37:0.000000 38:0.000000 39:0.000000 40:0.000000 "
    "41:0.000000 42:0.000000 43:0.070374 44:0.732435 45:0.000000 46:0.000000 "
    "#docid = GX008-86-4444840 inc = 1 prob = 0.086622\n",
    "0 qid:10032 1:0.279152 2:0.000000 3:0.000000 4:0.000000 5:0.279152 6:0.000000 7:0.000000 8:0.000000 "
    "9:0.000000 10:0.000000 11:0.000000 12:0.000000 13:0.000000 14:0.000000 15:0.000000 16:0.000000 "
    "17:0.000000 18:0.000000 19:0.000000 20:0.000000 21:0.279152 22:0.000000 23:0.000000 24:0.000000 "
    "25:0.279152 26:0.000000 27:0.000000 28:0.000000 29:0.000000 30:0.000000 31:0.000000 32:0.000000 "
    "33:0.000000 34:0.000000 35:0.000000 36:0.000000 37:0.000000 38:0.000000 39:0.000000 40:0.000000 "
    "41:0.000000 42:0.000000 43:0.214286 44:0.000000 45:0.000000 46:0.000000 "
    "#docid = GX037-06-11625428 inc = 0.0031586555555558 prob = 0.0897452\n",
    "\n",
    "# a comment-only line\n",
    "1 qid:10033 1:0.5 46:0.25 #docid = GX000-00-0000000 inc = 1 prob = 0.5\n",
]


def test_mq2007_comments_and_blank_lines(tmp_path):
    path = _write(tmp_path / "mq.txt", MQ2007)
    store = build_query_store(path, tmp_path / "s")  # num_features found by the pre-pass
    assert store.num_features == 46 and len(store) == 2 and store.n_docs == 3
    np.testing.assert_array_equal(store.qids, [10032, 10033])
    f, l = store.query(0)
    np.testing.assert_array_equal(l, [2, 0])
    assert f[0, 0] == np.float32(0.056537) and f[0, 43] == np.float32(0.732435) and f[1, 42] == np.float32(0.214286)
    f, l = store.query(1)
    np.testing.assert_array_equal(f[0, [0, 45]], [0.5, 0.25])
    assert np.count_nonzero(f) == 2 and l[0] == 1


def test_sparse_istella_style_missing_indices_are_zero(tmp_path):
    lines = ["0 qid:1 3:1.5 220:-2\n", "4 qid:1 1:7\n", "1 qid:2 5:1e-3 7:2.5E2\n", "0 qid:2\n"]
    path = _write(tmp_path / "sparse.txt", lines)
    store = build_query_store(path, tmp_path / "s", num_features=220)
    want = np.zeros((4, 220), np.float32)
    want[0, 2], want[0, 219], want[1, 0], want[2, 4], want[2, 6] = 1.5, -2, 7, 1e-3, 250
    got = np.concatenate([store.query(0)[0], store.query(1)[0]])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.concatenate([store.query(i)[1] for i in range(2)]), [0, 4, 1, 0])
    # without num_features the largest index decides
    assert build_query_store(path, tmp_path / "s2").num_features == 220


def test_store_round_trip_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(1)
    lines, X, y, q = _mslr_lines(rng, [1, 2, 3, 4], docs_per_query=2)
    path = _write(tmp_path / "f.txt", lines)
    build_query_store(path, tmp_path / "s", num_features=136)
    store = QueryStore.open(tmp_path / "s")
    assert isinstance(store._features, np.memmap)
    assert np.load(tmp_path / "s" / "features.npy").shape == (8, 136)
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "qid_offsets.npy"), [0, 2, 4, 6, 8])
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["n_docs"] == 8 and meta["n_queries"] == 4 and meta["num_features"] == 136
    assert meta["size"] == path.stat().st_size
    sub = store.subset([3, 1])
    assert len(sub) == 2 and sub.n_docs == 4
    np.testing.assert_array_equal(sub.qids, [4, 2])
    np.testing.assert_array_equal(sub.query(0)[0], X[6:8])
    np.testing.assert_array_equal(sub.subset([1]).query(0)[1], y[2:4])
    f, l, off = sub.arrays()
    np.testing.assert_array_equal(f, np.concatenate([X[6:8], X[2:4]]))
    np.testing.assert_array_equal(off, [0, 2, 4])
    with pytest.raises(IndexError):
        store.query(4)


def test_from_arrays():
    f = np.arange(12, dtype=np.float64).reshape(6, 2)
    s = QueryStore.from_arrays(f, np.arange(6), [0, 1, 6], [5, 9])
    assert len(s) == 2 and s.num_features == 2 and s.query(1)[0].dtype == np.float32
    np.testing.assert_array_equal(s.list_sizes, [1, 5])
    with pytest.raises(ValueError):
        QueryStore.from_arrays(f, np.arange(6), [0, 1, 5], [5, 9])


def test_small_chunks_match_one_chunk(tmp_path):
    rng = np.random.default_rng(2)
    lines, X, y, q = _mslr_lines(rng, [5, 6, 7, 8], docs_per_query=4)
    lines = lines[:5] + ["\n"] + lines[5:]
    path = _write(tmp_path / "f.txt", lines)
    a = build_query_store(path, tmp_path / "a", num_features=136, chunk_lines=3)
    build_query_store(path, tmp_path / "b", num_features=136)
    for name in ("features.npy", "labels.npy", "qid_offsets.npy", "qids.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))
    np.testing.assert_array_equal(a.list_sizes, [4, 4, 4, 4])
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "features.npy"), X)


def test_fast_path_agrees_with_line_parser():
    rng = np.random.default_rng(3)
    lines, X, y, q = _mslr_lines(rng, [1, 2], docs_per_query=5)
    blines = [l.encode() for l in lines + MQ2007]
    fast = letor._parse_fast(b"".join(letor._COMMENT.sub(b"", l) for l in blines))
    assert fast is not None
    slow = letor._parse_slow(blines, "x", 1)
    np.testing.assert_array_equal(fast.dense(136), slow.dense(136))
    np.testing.assert_array_equal(fast.labels, slow.labels)
    np.testing.assert_array_equal(fast.qids, slow.qids)
    np.testing.assert_array_equal(fast.line_idx, slow.line_idx)
    feats, labels, qids = parse_letor_lines(lines, num_features=136)
    np.testing.assert_array_equal(feats, X)


@pytest.mark.parametrize(
    "bad, lineno, what",
    [
        ("x qid:1 1:2\n", 2, "bad label"),
        ("1 1:2 2:3\n", 2, "missing qid"),
        ("1\n", 2, "missing qid"),
        ("1 qid:a 1:2\n", 2, "bad qid"),
        ("1 qid:1 1:2:3 4\n", 2, "bad feature pair"),
        ("1 qid:1 1:\n", 2, "bad feature pair"),
        ("1 qid:1 :5\n", 2, "bad feature pair"),
        ("1 qid:1 3:abc\n", 2, "bad feature pair"),
        ("1 qid:1 0:1\n", 2, "out of range"),
        ("1 qid:1 5:1\n", 2, "out of range 1..4"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad, lineno, what):
    path = _write(tmp_path / "bad.txt", ["0 qid:1 1:0.5 4:1\n", bad, "0 qid:2 2:1\n"])
    with pytest.raises(LetorFormatError) as ei:
        build_query_store(path, tmp_path / "s", num_features=4)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:{lineno}: ")
    assert what in msg
    assert "expected '<label> qid:<id> <index>:<value> ...'" in msg
    assert f"got '{bad.strip()[:80]}'" in msg
    assert ei.value.lineno == lineno


def test_non_contiguous_qid_is_an_error(tmp_path):
    lines = ["0 qid:1 1:1\n", "0 qid:2 1:1\n", "0 qid:2 1:1\n", "1 qid:1 1:3\n"]
    path = _write(tmp_path / "f.txt", lines)
    for chunk in (1, 2, 100):
        with pytest.raises(LetorFormatError, match=r":4: qid 1 appears again after other queries.*line 1"):
            build_query_store(path, tmp_path / "s", num_features=1, chunk_lines=chunk)


def test_index_above_num_features(tmp_path):
    path = _write(tmp_path / "f.txt", ["0 qid:1 1:1 137:2\n"])
    with pytest.raises(LetorFormatError, match=r"f.txt:1: feature index 137 out of range 1..136"):
        build_query_store(path, tmp_path / "s", num_features=136)


def test_missing_file_and_fold(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        open_letor(tmp_path / "nope.txt")
    fold = tmp_path / "Fold1"
    fold.mkdir()
    _write(fold / "train.txt", ["0 qid:1 1:1\n"])
    with pytest.raises(FileNotFoundError) as ei:
        load_ranking_splits("letor", path=fold)
    msg = str(ei.value)
    assert "vali.txt" in msg and "test.txt" in msg and str(fold) in msg


def test_letor_fold_and_single_file(tmp_path):
    fold = tmp_path / "Fold1"
    fold.mkdir()
    rng = np.random.default_rng(4)
    for name, qids in (("train.txt", [1, 2, 3]), ("vali.txt", [4]), ("test.txt", [5, 6])):
        _write(fold / name, _mslr_lines(rng, qids, 2)[0])
    s = load_ranking_splits("letor", path=fold)
    assert [len(s[k]) for k in ("train", "valid", "test")] == [3, 1, 2]
    assert s["valid"].qids.tolist() == [4] and s["train"].num_features == 136
    single = load_ranking_splits("letor", path=fold / "train.txt", valid_fraction=1 / 3, test_fraction=1 / 3)
    parts = [set(single[k].qids.tolist()) for k in ("train", "valid", "test")]
    assert all(len(p) == 1 for p in parts) and set.union(*parts) == {1, 2, 3}


def test_open_letor_reuses_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    path = _write(tmp_path / "f.txt", _mslr_lines(rng, [1, 2], 2)[0])
    a = open_letor(path, num_features=136)
    assert a.directory.parent == tmp_path / "cache" / "letor"
    calls = []
    real = letor.build_query_store
    monkeypatch.setattr(letor, "build_query_store", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = open_letor(path, num_features=136)
    assert calls == [] and b.directory == a.directory
    np.testing.assert_array_equal(a.query(1)[0], b.query(1)[0])
    # a changed file is converted again
    _write(path, _mslr_lines(rng, [1, 2, 3], 2)[0])
    c = open_letor(path, num_features=136)
    assert calls == [1] and len(c) == 3 and c.directory != a.directory


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="mslr_sample.*bio_kddcup04.*letor"):
        load_ranking_splits("mslr")
