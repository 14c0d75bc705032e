"""Content moderation: decision thresholds against scikit-learn's precision and recall, the
thresholds read from validation and carried by the export, the review queue (survives a killed
process, resolved labels become training rows, the command line), the server sending review
rows to the queue, the Jigsaw multi-label head, and (slow) the quality bar on the insults
competition's test file set by scikit-learn's TF-IDF + LogisticRegression."""
import json
import os
import subprocess
import sys

import httpx
import jax
import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score

from mlsd_jax.serving.review import ReviewError, ReviewQueue
from mlsd_jax.tasks import moderation as M
from tests.utils import compose_config

HARD_TEXTS = ["", "you are a 🤡 idiot!!", "Ünïcödé café 日本語 you moron", "a",
              "thanks, great point", "idiot " * 17000 + "tail"]  # the last one is 100 KB


def utf8(values):
    return np.asarray([v.encode("utf-8") for v in values], dtype=object)


# -------------------------------------------------------------------------------- thresholds
def test_decision_thresholds_reach_their_targets_and_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.3).astype(int)
    s = np.clip(0.35 * y + rng.normal(0.35, 0.2, len(y)), 0, 1)
    d = M.choose_decisions(s, y, block_precision=0.9, review_recall=0.95)
    assert d["review"] <= d["block"] and d["block_precision_met"]
    assert precision_score(y, s > d["block"]) >= 0.9
    assert recall_score(y, s > d["review"]) >= 0.95
    # The highest threshold reaching the recall: a little higher loses it.
    above = np.sort(s[s > d["review"]])[0]
    assert recall_score(y, s > above) < 0.95
    rep = M.decision_report(s, y, d["review"], d["block"])
    band = (s > d["review"]).astype(int) + (s > d["block"])
    assert rep["allow_rate"] + rep["review_rate"] + rep["block_rate"] == pytest.approx(1.0)
    assert rep["block_rate"] == pytest.approx(np.mean(band == 2))
    assert rep["block_precision"] == pytest.approx(precision_score(y, band == 2))
    assert rep["violating_allowed"] == pytest.approx(1 - recall_score(y, band > 0))
    assert rep["clean_blocked"] == pytest.approx(np.mean(band[y == 0] == 2))
    # A recall target the scores cannot separate: review falls back to below every positive.
    assert M.recall_threshold(s, y, 1.0) < s[y == 1].min()
    with pytest.raises(ValueError, match="task.review_recall"):
        M.recall_threshold(s, y, 1.5)


# -------------------------------------------------------------------------------- review queue
def test_review_queue_enqueue_list_resolve_and_clear_errors(tmp_path):
    path = tmp_path / "q.sqlite"
    with ReviewQueue(path) as q:
        ids = q.enqueue_many([{"text": np.asarray("you idiot", object)}, {"text": b"hmm \xf0\x9f\xa4\xa1"}],
                             [0.61, np.float32(0.4)], model="moderation", version=3,
                             request_id="r1")
        assert q.counts() == {"pending": 2, "resolved": 0}
        items = q.pending()
        assert [i["id"] for i in items] == ids and items[1]["inputs"]["text"] == "hmm 🤡"
        assert items[0]["score"] == pytest.approx(0.61) and items[0]["version"] == "3"
        got = q.resolve(ids[0], 1, reviewer="ana")
        assert got["status"] == "resolved" and got["label"] == 1 and got["reviewer"] == "ana"
        with pytest.raises(ReviewError, match="already resolved"):
            q.resolve(ids[0], 0)
        with pytest.raises(ReviewError, match="does not exist"):
            q.resolve(999, 0)
        with pytest.raises(ReviewError, match="field label"):
            q.resolve(ids[1], 2)
        text, label, item = q.labelled()
        assert list(text) == ["you idiot"] and list(label) == [1] and list(item) == [ids[0]]


def test_review_queue_survives_a_killed_process_and_the_command_line_resolves(tmp_path):
    path = tmp_path / "q.sqlite"
    code = ("import os, sys; from mlsd_jax.serving.review import ReviewQueue; "
            "q = ReviewQueue(sys.argv[1]); "
            "q.enqueue({'text': 'first comment'}, 0.5, model='m', version=1); "
            "q.enqueue({'text': 'second'}, 0.7, model='m', version=1); "
            "print('acked', flush=True); os.kill(os.getpid(), 9)")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == -9 and "acked" in p.stdout, p.stderr
    cli = [sys.executable, "-m", "experiments.review", "--db", str(path)]
    out = subprocess.run(cli + ["list"], capture_output=True, text=True, timeout=120, check=True)
    items = [json.loads(line) for line in out.stdout.splitlines()]
    assert [i["inputs"]["text"] for i in items] == ["first comment", "second"]
    subprocess.run(cli + ["resolve", str(items[1]["id"]), "1", "--reviewer", "bo"],
                   capture_output=True, text=True, timeout=120, check=True)
    bad = subprocess.run(cli + ["resolve", str(items[1]["id"]), "0"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "already resolved" in bad.stderr
    stats = subprocess.run(cli + ["stats"], capture_output=True, text=True, timeout=120,
                           check=True)
    assert json.loads(stats.stdout) == {"pending": 1, "resolved": 1}


def test_resolved_review_labels_join_the_training_split_only(tmp_path):
    path = tmp_path / "q.sqlite"
    with ReviewQueue(path) as q:
        ids = q.enqueue_many([{"text": "shut up you clown"}, {"text": "fair enough"},
                              {"text": "still pending"}], [0.6, 0.3, 0.5], model="moderation",
                             version=1)
        q.resolve(ids[0], 1)
        q.resolve(ids[1], 0)
    cfg = compose_config(["+task=moderation"])
    base = M.load_data(cfg.data)
    cfg.data.review_queue = str(path)
    fed = M.load_data(cfg.data)
    assert fed.info["review_rows_added_to_train"] == 2
    assert len(fed.splits["train"]) == len(base.splits["train"]) + 2
    for s in ("valid", "test"):
        np.testing.assert_array_equal(fed.splits[s], base.splits[s])
    tail = fed.splits["train"][-2:]
    assert list(fed.text[tail]) == ["shut up you clown", "fair enough"]
    assert list(fed.labels[tail]) == [1.0, 0.0]


# ------------------------------------------------------------------------------ task, serving
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mlsd_jax.experiment import run

    workdir = tmp_path_factory.mktemp("moderation")
    results = run(compose_config(["+task=moderation", "export.enabled=true"]), workdir=workdir)
    return results, workdir


def test_run_chooses_thresholds_on_validation_and_exports_them(trained):
    from mlsd_jax.export import load_bundle, saved_model_predict

    results, _ = trained
    m = results["metrics"]
    assert jax.device_count() == 8 and results["objective"]["name"] == "valid/auc"
    chosen = results["post_fit"]["decision_thresholds"]
    assert results["post_fit"]["chosen_on"] == "valid"
    for split in ("valid", "test"):
        assert m[f"{split}/threshold_review"] == pytest.approx(chosen["review"])
        assert m[f"{split}/threshold_block"] == pytest.approx(chosen["block"])
        assert 0.5 < m[f"{split}/auc"] <= 1.0
        total = sum(m[f"{split}/{k}_rate"] for k in ("allow", "review", "block"))
        assert total == pytest.approx(1.0, abs=1e-6)
    path = results["paths"]["export"]
    bundle = load_bundle(path)
    np.testing.assert_allclose(float(bundle.consts["decision"]["review"]), chosen["review"],
                               rtol=1e-6)
    fast = bundle.predict({"text": np.asarray(HARD_TEXTS, object)})
    saved = saved_model_predict(path, {"text": utf8(HARD_TEXTS)})
    np.testing.assert_allclose(saved["prob"], fast["prob"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(saved["decision"], fast["decision"])
    want = ((fast["score"] > chosen["review"]).astype(int) + (fast["score"] > chosen["block"]))
    np.testing.assert_array_equal(fast["decision"], want)
    assert fast["decision"].dtype == np.int32 and fast["prob"].shape == (len(HARD_TEXTS),)


@pytest.mark.slow
def test_server_sends_review_rows_to_the_queue(trained, tmp_path):
    from mlsd_jax.serving import serve_config, start_server

    results, workdir = trained
    queue = tmp_path / "review.sqlite"
    cfg = serve_config({"models": [{"name": "moderation", "base_path": str(workdir / "export")}],
                        "host": "127.0.0.1", "rest_port": 0, "grpc_port": -1,
                        "access_log": False, "compilation_cache": str(tmp_path / "xla"),
                        "log": {"dir": str(tmp_path / "log")}, "review_queue": str(queue)})
    texts = [t for t in M.load_data(compose_config(["+task=moderation"]).data).text[:200]]
    with start_server(cfg) as server, httpx.Client(base_url=server.rest_url, timeout=60) as http:
        r = http.post("/v1/models/moderation:predict", json={"instances": texts})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        bad = http.post("/v1/models/moderation:predict", json={"instances": [{"txt": "x"}]})
        assert bad.status_code == 400 and "text" in bad.text
        metrics_text = http.get("/metrics").text
    review = [t for t, p in zip(texts, preds) if p["decision"] == 1]
    assert review, "no comment of 200 fell in the review band"
    with ReviewQueue(queue) as q:
        items = q.pending(limit=1000)
    assert [i["inputs"]["text"] for i in items] == review
    assert all(i["model"] == "moderation" and i["request_id"] for i in items)
    assert f'mlsd_serving_review_enqueued_total{{model="moderation"}} {float(len(review))}' \
        in metrics_text


@pytest.mark.slow
def test_jigsaw_file_trains_a_multi_label_head(tmp_path):
    from mlsd_jax.data.moderation import JIGSAW_LABELS
    from mlsd_jax.experiment import run

    # A small generated file in the Jigsaw layout (labels follow seeded word rules).
    rng = np.random.default_rng(0)
    words = {"toxic": "awful", "severe_toxic": "vile", "obscene": "filthy", "threat": "hurt",
             "insult": "idiot", "identity_hate": "bigot"}
    filler = "the a talk page edit article source thanks please see note".split()
    lines = ["id,comment_text," + ",".join(JIGSAW_LABELS)]
    for i in range(400):
        labels = rng.random(len(JIGSAW_LABELS)) < 0.15
        text = " ".join(rng.choice(filler, 8)) + " " + " ".join(
            w for w, on in zip(words.values(), labels) if on)
        lines.append(f'{i:06x},"{text}\n""quoted"" line",' + ",".join(str(int(v)) for v in labels))
    path = tmp_path / "train.csv"
    path.write_text("\n".join(lines) + "\n")
    cfg = compose_config(["+task=moderation", "moderation/data=jigsaw", f"data.path={path}",
                          "trainer.max_steps=60"])
    results = run(cfg, workdir=tmp_path / "run")
    m = results["metrics"]
    assert results["data"]["labels"] == list(JIGSAW_LABELS)
    assert {f"test/auc/{k}" for k in JIGSAW_LABELS} <= set(m)
    assert m["test/mean_column_auc"] > 0.8, m
    with pytest.raises(ValueError, match="data.review_queue"):
        cfg.data.review_queue = str(tmp_path / "q.sqlite")
        M.load_data(cfg.data)


def test_bad_settings_name_the_field():
    cfg = compose_config(["+task=moderation", "data.name=nope"])
    with pytest.raises(ValueError, match="data.name"):
        M.load_data(cfg.data)
    cfg = compose_config(["+task=moderation", "task.block_precision=1.5"])
    from mlsd_jax import tasks

    with pytest.raises(ValueError, match="task.block_precision"):
        tasks.build(cfg)


# ------------------------------------------------------------------------------------ quality
# scikit-learn TF-IDF (word 1-2-grams + char_wb 2-5-grams, sublinear TF) + LogisticRegression,
# C tuned on validation ROC-AUC, same split (data.seed=0), measured with
#   python benchmarks/moderation.py --seeds 0 --peers-only
# (scikit-learn 1.9.1): test ROC-AUC 0.9078 on test_with_solutions.csv.
SKLEARN_INSULTS_TEST_AUC = 0.9078


@pytest.mark.slow
def test_default_insults_run_matches_the_scikit_learn_peer(tmp_path):
    from mlsd_jax.experiment import run

    cfg = compose_config(["+task=moderation", "export.enabled=false", "trainer.progress=false"],
                         tiny=False)
    m = run(cfg, workdir=tmp_path)["metrics"]
    assert m["test/auc"] >= SKLEARN_INSULTS_TEST_AUC - 0.005, m
    assert m["test/block_precision"] >= 0.85 and m["test/violating_allowed"] <= 0.1, m
