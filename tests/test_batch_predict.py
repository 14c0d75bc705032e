"""Batch scoring: the exported bundle's feature path over Parquet, CSV and LETOR files, streamed
locally and on Spark (``mapInPandas``), with the same numbers from both; bad input is named."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from flax.linen import meta

from mlsd_jax import tasks
from mlsd_jax.data import ranking as ranking_data
from mlsd_jax.data import tabular as tab
from mlsd_jax.data.letor import LetorFormatError
from mlsd_jax.export import bundle as bundle_module
from mlsd_jax.export import load_bundle
from mlsd_jax.serving import batch as B
from mlsd_jax.tasks.base import init_variables
from mlsd_jax.tasks.tabular import serving_inputs
from tests.utils import compose_config

ROOT = Path(__file__).resolve().parents[1]


def _bundle(base: Path, overrides) -> Path:
    """A bundle of the task built on its real data (fitted feature spec), with the model's
    initial weights: scoring does not depend on how far training went, so the tests skip it.
    The card's library list is left out, so writing it does not import TensorFlow."""
    cfg = compose_config(overrides)
    task = tasks.build(cfg)
    variables = meta.unbox(init_variables(task.model, task.forward, task.consts,
                                          task.inputs(task.example_batch), jax.random.key(0)))
    version = base / "1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundle_module, "library_versions", lambda: {})
        bundle_module.write_bundle(version / "assets.extra", task,
                                   jax.tree.map(np.asarray, jax.device_get(variables)),
                                   jax.tree.map(np.asarray, jax.device_get(task.consts)),
                                   config=task.config, card={"version": 1})
    return version


@pytest.fixture(scope="module")
def tabular_model(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("tabular"), ["+task=tabular"])


@pytest.fixture(scope="module")
def ranking_model(tmp_path_factory):
    return _bundle(tmp_path_factory.mktemp("ranking"), ["+task=ranking"])


@pytest.fixture(scope="module")
def adult(tmp_path_factory):
    """3,001 real UCI Adult rows with an id column, as Parquet (row groups of 700) and CSV."""
    table = pq.read_table(tab.fetch_packaged(tab.ADULT)).slice(0, 3001)
    table = table.append_column("id", pa.array(np.arange(table.num_rows)))
    d = tmp_path_factory.mktemp("adult")
    pq.write_table(table, d / "adult.parquet", row_group_size=700)
    pcsv.write_csv(table, d / "adult.csv")
    return table, d / "adult.parquet", d / "adult.csv"


@pytest.fixture(scope="module")
def letor_file(tmp_path_factory):
    """The first 1,500 lines of the real MSLR-WEB10K test sample (136 features, whole queries
    plus the start of one more)."""
    src = Path(ranking_data.fetch_packaged(ranking_data.MSLR_SAMPLE_TEST))
    lines = src.read_text().splitlines(keepends=True)[:1500]
    path = tmp_path_factory.mktemp("letor") / "test.txt"
    path.write_text("".join(lines))
    return path


def _cfg(model, inp, out, **kw):
    return B.BatchPredictConfig(model=str(model), input=str(inp), output=str(out),
                                progress=False, **kw)


# ------------------------------------------------------------------------------- rows
def test_parquet_rows_match_the_bundle_and_stream_into_row_groups(tabular_model, adult, tmp_path):
    table, parquet, _ = adult
    out = tmp_path / "scores.parquet"
    summary = B.predict(_cfg(tabular_model.parent, parquet, out, keep=["id"], batch_size=512,
                             row_group_size=1000))
    assert summary["rows_in"] == summary["rows_out"] == 3001 and summary["layout"] == "rows"
    assert summary["version"] == "1"
    got = pq.read_table(out)
    assert got.column_names == ["id", "prob", "logit"]
    assert got.schema.field("prob").type == pa.float32()
    assert pq.ParquetFile(out).metadata.num_row_groups == 4
    np.testing.assert_array_equal(got["id"].to_numpy(), np.arange(3001))
    bundle = load_bundle(tabular_model)
    # The training reader's columns, keyed by serving name: the reference path.
    columns = serving_inputs(tab.read_table(parquet))
    want = bundle.predict({k: columns[k] for k in bundle.signatures["serving_default"].inputs})
    np.testing.assert_allclose(got["prob"].to_numpy(), want["prob"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["logit"].to_numpy(), want["logit"], rtol=1e-5, atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_csv_and_parquet_score_identically(tabular_model, adult, tmp_path):
    _, parquet, csv = adult
    a = B.predict(_cfg(tabular_model, parquet, tmp_path / "a.parquet", keep=["id"], batch_size=512))
    b = B.predict(_cfg(tabular_model, csv, tmp_path / "b.parquet", keep=["id"], batch_size=512))
    assert a["format"] == "parquet" and b["format"] == "csv"
    ta, tb = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    # CSV cells are copied as text; the scores are the same numbers bit for bit.
    assert tb["id"].to_pylist() == [str(i) for i in range(3001)]
    for k in ("prob", "logit"):
        np.testing.assert_array_equal(ta[k].to_numpy(), tb[k].to_numpy())


def test_scores_do_not_depend_on_batch_neighbours(tabular_model, adult, tmp_path):
    """A row scores the same wherever it sits in a padded call (what lets Spark's partitions
    agree with the local stream): reversed input, same numbers."""
    table, _, _ = adult
    reversed_path = tmp_path / "reversed.parquet"
    pq.write_table(table.take(pa.array(np.arange(table.num_rows)[::-1])), reversed_path)
    B.predict(_cfg(tabular_model, adult[1], tmp_path / "a.parquet", keep=["id"], batch_size=512))
    B.predict(_cfg(tabular_model, reversed_path, tmp_path / "b.parquet", keep=["id"],
                   batch_size=512))
    a = pq.read_table(tmp_path / "a.parquet").to_pandas().set_index("id").sort_index()
    b = pq.read_table(tmp_path / "b.parquet").to_pandas().set_index("id").sort_index()
    np.testing.assert_array_equal(a["prob"].to_numpy(), b["prob"].to_numpy())


# ------------------------------------------------------------------------------- lists
def test_letor_lists_match_the_bundle_per_query(ranking_model, letor_file, tmp_path):
    out = tmp_path / "ranked.parquet"
    summary = B.predict(_cfg(ranking_model, letor_file, out, batch_size=1024))
    assert summary["format"] == "letor" and summary["layout"] == "lists"
    got = pq.read_table(out).to_pandas()
    assert list(got.columns) == ["qid", "label", "doc", "scores"]
    x, labels, qids = B.letor_table(letor_file.read_text().splitlines(), 136, "features",
                                    str(letor_file)).to_pandas().pipe(
        lambda d: (np.stack(d["features"]), d["label"].to_numpy(), d["qid"].to_numpy()))
    assert summary["rows_in"] == summary["rows_out"] == len(got) == 1500
    # Reference: every query in one padded call of the bundle (the server's path).
    queries = list(dict.fromkeys(qids.tolist()))
    longest = max(int(np.sum(qids == q)) for q in queries)
    feats = np.zeros((len(queries), longest, 136), np.float32)
    mask = np.zeros((len(queries), longest), bool)
    for i, q in enumerate(queries):
        feats[i, :np.sum(qids == q)] = x[qids == q]
        mask[i, :np.sum(qids == q)] = True
    want = load_bundle(ranking_model).predict({"features": feats, "mask": mask})["scores"]
    for i, q in enumerate(queries):
        docs = got[got.qid == q].sort_values("doc")
        n = int(mask[i].sum())
        np.testing.assert_array_equal(docs["doc"].to_numpy(), np.arange(n))
        np.testing.assert_array_equal(docs["label"].to_numpy(), labels[qids == q])
        np.testing.assert_allclose(docs["scores"].to_numpy(), want[i, :n], rtol=1e-5, atol=1e-5)


def test_parquet_lists_group_by_query_column(ranking_model, letor_file, tmp_path):
    docs = B.letor_table(letor_file.read_text().splitlines(), 136, "features", str(letor_file))
    docs = docs.append_column("docid", pa.array([f"d{i}" for i in range(docs.num_rows)]))
    pq.write_table(docs, tmp_path / "docs.parquet", row_group_size=333)
    B.predict(_cfg(ranking_model, tmp_path / "docs.parquet", tmp_path / "a.parquet",
                   keep=["docid"], batch_size=1024))
    B.predict(_cfg(ranking_model, letor_file, tmp_path / "b.parquet", batch_size=1024))
    a = pq.read_table(tmp_path / "a.parquet").to_pandas().sort_values(["qid", "doc"])
    b = pq.read_table(tmp_path / "b.parquet").to_pandas().sort_values(["qid", "doc"])
    assert list(a.columns) == ["qid", "docid", "doc", "scores"]
    np.testing.assert_array_equal(a["scores"].to_numpy(), b["scores"].to_numpy())
    assert sorted(a["docid"]) == sorted(f"d{i}" for i in range(1500))


# ------------------------------------------------------------------------------- streams
def test_rebatch_and_groups_cut_streams_exactly():
    tables = [pa.table({"q": [1, 1, 2]}), pa.table({"q": [2, 2]}), pa.table({"q": [3]}),
              pa.table({"q": [3, 4, 4, 4, 5]})]
    assert [t.num_rows for t in B.rebatch(tables, 4)] == [4, 4, 3]
    assert [t["q"].to_pylist() for t in B.groups(tables, "q", "x")] == [
        [1, 1], [2, 2, 2], [3, 3], [4, 4, 4], [5]]
    with pytest.raises(B.BatchInputError, match="q 1 appears again"):
        list(B.groups([pa.table({"q": [1, 2]}), pa.table({"q": [1]})], "q", "x"))


def test_reading_stays_a_bounded_distance_ahead():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield i

    stream = B._ahead(items(), lambda i: i * 2, workers=2, depth=3)
    assert next(stream) == 0
    import time

    time.sleep(0.3)
    # consumed + the queue (depth) + the window of futures (depth - 1) + one in hand
    assert len(pulled) <= 2 * 3 + 1
    assert list(stream) == [2 * i for i in range(1, 100)]


# ------------------------------------------------------------------------------- errors
def test_missing_columns_are_named(tabular_model, adult, tmp_path):
    table, _, _ = adult
    path = tmp_path / "partial.parquet"
    pq.write_table(table.drop_columns(["age", "marital-status"]), path)
    with pytest.raises(B.BatchInputError, match=r"\['marital_status', 'age'\] missing"):
        B.predict(_cfg(tabular_model, path, tmp_path / "o.parquet"))
    with pytest.raises(B.BatchInputError, match=r"keep columns \['nope'\] not found"):
        B.predict(_cfg(tabular_model, adult[1], tmp_path / "o.parquet", keep=["nope"]))
    with pytest.raises(B.ConfigError, match=r"keep=\['prob'\]"):
        pq.write_table(table.append_column("prob", pa.array(np.zeros(table.num_rows))), path)
        B.predict(_cfg(tabular_model, path, tmp_path / "o.parquet", keep=["prob"]))


def test_wrong_types_are_named(tabular_model, adult, tmp_path):
    table, _, _ = adult
    path = tmp_path / "typed.parquet"
    ages = pa.array([f"{v} years" for v in table["age"].to_pylist()])
    pq.write_table(table.set_column(table.column_names.index("age"), "age", ages), path)
    with pytest.raises(B.BatchInputError, match=r"column 'age' has type string .*expected numbers"):
        B.predict(_cfg(tabular_model, path, tmp_path / "o.parquet"))
    work = pa.array(np.arange(table.num_rows, dtype=np.float64))
    pq.write_table(table.set_column(table.column_names.index("workclass"), "workclass", work), path)
    with pytest.raises(B.BatchInputError, match=r"column 'workclass' has type double; expected strings"):
        B.predict(_cfg(tabular_model, path, tmp_path / "o.parquet"))


def test_a_bad_csv_cell_stops_the_run_and_leaves_no_output(tabular_model, adult, tmp_path):
    lines = adult[2].read_text().splitlines(keepends=True)
    header = lines[0].split(",")
    age = header.index('"age"')
    cells = lines[2500].split(",")
    cells[age] = "forty"
    lines[2500] = ",".join(cells)
    path = tmp_path / "bad.csv"
    path.write_text("".join(lines))
    out = tmp_path / "o.parquet"
    with pytest.raises(B.BatchInputError, match=r"column 'age' row \d+ is 'forty'; expected a number"):
        B.predict(_cfg(tabular_model, path, out, batch_size=512, row_group_size=256))
    assert list(tmp_path.iterdir()) == [path]  # neither the output nor its temporary file


def test_letor_errors_name_the_line(ranking_model, letor_file, tmp_path):
    lines = letor_file.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines[:700] + ["2 qid:9999 1:0.5 140:1\n"] + lines[700:]))
    with pytest.raises(LetorFormatError, match=r"bad.txt:701: feature index 140 out of range "
                                               r"1..136 \(the model takes 136 features\)"):
        B.predict(_cfg(ranking_model, bad, tmp_path / "o.parquet"))
    split = tmp_path / "split.txt"
    split.write_text("".join(lines[:10] + lines[-10:] + lines[10:20]))
    with pytest.raises(B.BatchInputError, match=r"qid \d+ appears again"):
        B.predict(_cfg(ranking_model, split, tmp_path / "o.parquet"))


def test_bad_settings_are_named(tabular_model, ranking_model, adult, letor_file, tmp_path):
    out = tmp_path / "o.parquet"
    with pytest.raises(FileNotFoundError, match="no numbered version folders"):
        B.predict(_cfg(tmp_path, adult[1], out))
    with pytest.raises(B.ConfigError, match="format='orc'"):
        B.predict(_cfg(tabular_model, adult[1], out, format="orc"))
    with pytest.raises(B.ConfigError, match="engine='dask'"):
        B.predict(_cfg(tabular_model, adult[1], out, engine="dask"))
    with pytest.raises(B.BatchInputError, match="format=letor gives one feature vector"):
        B.predict(_cfg(tabular_model, letor_file, out))
    with pytest.raises(B.BatchInputError, match=r"columns \['qid', 'features', 'mask'\] missing|"
                                                r"columns \['features', 'qid'\] missing"):
        B.predict(_cfg(ranking_model, adult[1], out))
    out.write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        B.predict(_cfg(tabular_model, adult[1], out))


def test_base_folder_resolves_to_the_newest_version(tabular_model, tmp_path):
    for v in ("2", "10"):
        shutil.copytree(tabular_model, tmp_path / v)
    (tmp_path / "11").mkdir()  # no bundle inside: not a version
    assert B.resolve_model(tmp_path) == tmp_path / "10"
    assert B.resolve_model(tmp_path / "2") == tmp_path / "2"


# ------------------------------------------------------------------------------- CLI
def test_cli_prints_a_summary_and_names_errors_in_one_line(tabular_model, adult, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu")
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "experiments.batch_predict", f"model={tabular_model.parent}",
           f"input={adult[1]}", f"output={out}", "keep=[id]", "batch_size=512", "progress=false",
           f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary["rows_out"] == 3001 and pq.read_table(out).num_rows == 3001
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: output=")


# ------------------------------------------------------------------------------- Spark
@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    session = B.spark_session("local[2]", conf={"spark.sql.shuffle.partitions": "4",
                                                "spark.sql.files.maxPartitionBytes": "16384"})
    yield session
    session.stop()


def _same(a: Path, b: Path, key):
    ta = pq.read_table(a).to_pandas().sort_values(key).reset_index(drop=True)
    tb = pq.read_table(b).to_pandas().sort_values(key).reset_index(drop=True)
    assert list(ta.columns) == list(tb.columns)
    assert len(ta) == len(tb)
    for c in ta.columns:
        np.testing.assert_array_equal(ta[c].to_numpy(), tb[c].to_numpy(), err_msg=c)


@pytest.mark.slow
def test_spark_and_local_write_the_same_scores(spark, tabular_model, ranking_model, adult,
                                               letor_file, tmp_path):
    """Several partitions (16 KB splits, so batches start at other rows than locally) and a
    shuffle by query for lists: the outputs equal the local ones bit for bit."""
    runs = [("parquet", tabular_model, adult[1], ["id"], ["id"], 512),
            ("csv", tabular_model, adult[2], ["id"], ["id"], 512),
            ("letor", ranking_model, letor_file, [], ["qid", "doc"], 1024)]
    for name, model, inp, keep, key, size in runs:
        local = B.predict(_cfg(model, inp, tmp_path / f"{name}.parquet", keep=keep,
                               batch_size=size))
        remote = B.predict_spark(_cfg(model, inp, tmp_path / f"{name}_spark", keep=keep,
                                      batch_size=size, engine="spark"), spark)
        assert remote["rows_in"] == remote["rows_out"] == local["rows_out"], name
        _same(tmp_path / f"{name}.parquet", tmp_path / f"{name}_spark", key)
    assert len(list((tmp_path / "parquet_spark").glob("part-*.parquet"))) > 1


@pytest.mark.slow
def test_spark_reports_input_errors_in_one_line(spark, ranking_model, letor_file, tmp_path):
    lines = letor_file.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.txt"
    bad.write_text("".join(lines[:5] + ["x qid:1 1:0.5\n"] + lines[5:]))
    with pytest.raises(B.BatchInputError, match=r"bad label 'x'.*got 'x qid:1 1:0.5'"):
        B.predict_spark(_cfg(ranking_model, bad, tmp_path / "o", engine="spark"), spark)
