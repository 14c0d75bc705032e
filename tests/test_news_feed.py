"""News feed: NRMS layers, MIND's metrics against NumPy references, the click simulator, the
MIND reader, the batch stream, a training run on 8 devices, the export round trip on raw titles,
and (slow) the quality bar set by the popularity and recency baselines."""
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.data import news as nd
from mlsd_jax.experiment import run
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.models.news import NRMS, AdditiveAttention
from mlsd_jax.tasks import news_feed as nf
from tests.utils import compose_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_nrms(**kw):
    return NRMS(**{"vocab_size": 40, "embed_dim": 8, "num_heads": 2, "query_dim": 8,
                   "dropout": 0.0, **kw})


def random_inputs(seed, b=3, h=5, c=6, t=7, vocab=40):
    rng = np.random.default_rng(seed)
    hist = rng.integers(1, vocab, (b, h, t)).astype(np.int32)
    cand = rng.integers(1, vocab, (b, c, t)).astype(np.int32)
    hist[..., 4:] = 0  # titles shorter than t
    cand[..., 5:] = 0
    hmask = rng.random((b, h)) < 0.7
    cmask = rng.random((b, c)) < 0.8
    hmask[:, 0] = cmask[:, 0] = True
    return hist, hmask, cand, cmask


# ---------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def nrms():
    model = tiny_nrms()
    variables = jax.jit(model.init)(jax.random.key(0), *random_inputs(0))
    return model, variables, jax.jit(model.apply)


def test_nrms_shapes_masks_and_padding_invariance(nrms):
    model, variables, apply = nrms
    hist, hmask, cand, cmask = random_inputs(0)
    scores = np.asarray(apply(variables, hist, hmask, cand, cmask))
    assert scores.shape == (3, 6) and np.all(np.isfinite(scores))
    assert np.all(scores[~cmask] == -1e9) and np.all(scores[cmask] > -1e8)
    # Whatever sits in masked history slots and masked candidates changes no valid score.
    rng = np.random.default_rng(1)
    hist2 = np.where(hmask[..., None], hist, rng.integers(1, 40, hist.shape)).astype(np.int32)
    cand2 = np.where(cmask[..., None], cand, rng.integers(1, 40, cand.shape)).astype(np.int32)
    np.testing.assert_allclose(apply(variables, hist2, hmask, cand2, cmask), scores,
                               rtol=1e-5, atol=1e-6)
    # Padding words (id 0) appended to every title change nothing.
    pad = lambda x: np.concatenate([x, np.zeros(x.shape[:-1] + (5,), np.int32)], -1)  # noqa: E731
    np.testing.assert_allclose(apply(variables, pad(hist), hmask, pad(cand), cmask), scores,
                               rtol=1e-5, atol=1e-6)
    # Candidates are scored independently: permuting them permutes the scores.
    perm = np.array([3, 1, 5, 0, 2, 4])
    np.testing.assert_allclose(apply(variables, hist, hmask, cand[:, perm], cmask[:, perm]),
                               scores[:, perm], rtol=1e-5, atol=1e-6)
    # Word ids past the vocabulary all read the table's OOV row (never out of bounds).
    oov = np.asarray(apply(variables, hist, hmask, np.where(cand > 0, cand + 1000, 0)
                           .astype(np.int32), cmask))
    same = np.asarray(apply(variables, hist, hmask, np.where(cand > 0, 5000, 0)
                            .astype(np.int32), cmask))
    assert np.all(np.isfinite(oov))
    np.testing.assert_allclose(oov, same, rtol=1e-5, atol=1e-6)


def test_empty_history_scores_with_the_learned_empty_user_and_finite_gradients(nrms):
    from mlsd_jax.losses import softmax_loss

    model, variables, _ = nrms
    hist, hmask, cand, cmask = random_inputs(0)
    hmask[1] = False           # a user without history
    cmask[2] = False           # and an impression without any valid candidate
    labels = np.zeros(cmask.shape, np.float32)
    labels[:, 0] = 1.0

    @jax.jit
    def scores_news_grads(params):
        def loss(p):
            s = model.apply({"params": p}, hist, hmask, cand, cmask)
            return softmax_loss(s, labels, where=cmask), s

        (_, s), g = jax.value_and_grad(loss, has_aux=True)(params)
        return s, model.apply({"params": params}, cand, method=NRMS.encode_news), g

    scores, news, grads = scores_news_grads(variables["params"])
    assert np.all(np.isfinite(np.asarray(scores)))
    empty = nn.meta.unbox(variables["params"]["user_encoder"]["empty_user"])
    want = np.einsum("d,cd->c", np.asarray(empty), np.asarray(news[1]))
    np.testing.assert_allclose(np.asarray(scores)[1][cmask[1]], want[cmask[1]], rtol=1e-5,
                               atol=1e-6)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_additive_attention_ignores_masked_positions_and_pools_empty_rows_to_zero():
    layer = AdditiveAttention(4)
    x = jax.random.normal(jax.random.key(0), (2, 5, 6))
    mask = np.array([[True, True, False, True, False], [False] * 5])
    variables = layer.init(jax.random.key(1), x, mask)
    apply = jax.jit(layer.apply)
    out = apply(variables, x, mask)
    garbage = jnp.where(mask[..., None], x, 1e6)
    np.testing.assert_allclose(apply(variables, garbage, mask), out, rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)
    g = jax.jit(jax.grad(lambda v: layer.apply(v, x, mask).sum()))(variables)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(g))


# ------------------------------------------------------------------------------------ features
TITLES = ["Trump signs order on Brexit talks", "Brexit: May's plan, again!", "Ünïcödé café 🙂 news",
          "Kim Jong-nam killed at airport", "trump TRUMP Trump"]


def test_tokenizer_vocabulary_oov_padding_and_json_round_trip():
    tok = nf.TitleTokenizer.fit(TITLES, max_tokens=6)
    ids = tok.encode_np(np.array([["trump brexit", "zzz unseen", ""]], dtype=object))
    assert ids.shape == (1, 3, 6) and ids.dtype == np.int32
    assert np.all(ids[0, 0, :2] >= 2) and np.all(ids[0, 0, 2:] == 0)
    assert list(ids[0, 1, :2]) == [1, 1]          # unseen words -> the OOV id
    assert np.all(ids[0, 2] == 0)                 # empty title -> padding only
    assert tok.ids.vocab[0] == "trump"            # most frequent first
    assert tok.vocab_size == 2 + len(tok.ids.vocab)
    long = tok.encode_np(np.array(["a b c d e f g h"], dtype=object))
    assert (long > 0).sum() == 6                   # the first max_tokens words
    back = nf.TitleTokenizer.from_json(json.loads(json.dumps(tok.to_json())))
    np.testing.assert_array_equal(back.encode_np(np.array(TITLES, dtype=object)),
                                  tok.encode_np(np.array(TITLES, dtype=object)))


def test_numpy_and_tensorflow_encoders_agree_on_raw_titles():
    tf = pytest.importorskip("tensorflow")
    tok = nf.TitleTokenizer.fit(TITLES, max_tokens=5)
    encode_np, encode_tf = nf._encoders(tok, max_history=3)
    raw = {"history_titles": np.array([["", "Brexit talks", "", "Trump!"],
                                       ["", "", "", ""],
                                       ["a", "b", "c", "Ünïcödé 🙂 unseen-word"]], dtype=object),
           "candidate_titles": np.array([["Kim Jong-nam", ""], ["", "TRUMP  trump"],
                                         ["café", "x y z w v u t"]], dtype=object)}
    want = encode_np(raw)
    utf8 = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])
    got = encode_tf({k: tf.constant(utf8(v)) for k, v in raw.items()})
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)
    # History: the last max_history non-empty titles, left-aligned.
    assert list(want["history_mask"][0]) == [True, True, False]
    assert list(want["history_mask"][1]) == [False, False, False]
    np.testing.assert_array_equal(want["history"][2], tok.encode_np(
        np.array(["b", "c", "Ünïcödé 🙂 unseen-word"], dtype=object)))


# ------------------------------------------------------------------------------------- metrics
def _mind_reference(labels, scores):
    """MIND's evaluate.py formulas (sklearn AUC; MRR over all clicks; nDCG@k)."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(-scores, kind="stable")
    y = labels[order]

    def dcg(y_sorted, k):
        y_sorted = y_sorted[:k]
        return np.sum((2 ** y_sorted - 1) / np.log2(np.arange(len(y_sorted)) + 2))

    ideal = np.sort(labels)[::-1]
    return {"auc": roc_auc_score(labels, scores),
            "mrr": np.sum(y / (np.arange(len(y)) + 1)) / np.sum(labels),
            "ndcg@5": dcg(y, 5) / dcg(ideal, 5), "ndcg@10": dcg(y, 10) / dcg(ideal, 10)}


def test_impression_metrics_match_mind_and_sklearn_per_impression():
    rng = np.random.default_rng(0)
    b, c = 48, 16
    scores = rng.normal(size=(b, c)).astype(np.float32)
    labels = (rng.random((b, c)) < 0.2).astype(np.float32)
    mask = rng.random((b, c)) < 0.85
    mask[:, :2] = True
    labels[:, 0], labels[:, 1] = 1.0, 0.0
    labels[3] = 0.0                       # no click: skipped by every metric
    labels[4] = np.where(mask[4], 1.0, 0.0)  # only clicks: skipped by AUC only
    scores[5, :6] = 0.25                  # ties count one half in AUC
    weights = np.ones(b, np.float32)
    weights[-2:] = 0.0                    # padding rows
    scores[-1] = np.nan                   # anything may sit in them
    got = {k: ms.evaluate_arrays(m, {"scores": scores}, {"label": labels, "candidate_mask": mask},
                                 weights, batch_size=16)
           for k, m in nf.news_metrics().items()}
    ref: dict = {k: [] for k in got}
    for i in range(b - 2):
        y, s = labels[i][mask[i]], scores[i][mask[i]]
        if y.sum() == 0:
            continue
        r = _mind_reference(y, s) if y.sum() < len(y) else {
            **{k: v for k, v in _mind_reference(np.r_[y, 0], np.r_[s, -9]).items()}, "auc": None}
        for k, v in r.items():
            if v is not None:
                ref[k].append(v)
    assert len(ref["auc"]) == b - 4 and len(ref["mrr"]) == b - 3
    for k in got:
        assert got[k] == pytest.approx(np.mean(ref[k]), abs=1e-5), k


def test_auc_metric_is_weighted_like_sklearn():
    from sklearn.metrics import roc_auc_score

    from mlsd_jax.metrics.ranking import auc_metric

    rng = np.random.default_rng(3)
    s = rng.normal(size=(4, 9))
    y = (rng.random((4, 9)) < 0.4).astype(float)
    y[:, 0], y[:, 1] = 1, 0
    w = rng.uniform(0.5, 2.0, (4, 9))
    got = np.asarray(auc_metric(s, y, weights=w, reduce_fn=None))
    for i in range(4):
        assert got[i] == pytest.approx(roc_auc_score(y[i], s[i], sample_weight=w[i]), abs=1e-5)


# ---------------------------------------------------------------------------------- simulator
SMALL = dict(users=400, impressions_per_user=10.0, seed=3)


@pytest.fixture(scope="module")
def articles():
    return nd.load_articles()


@pytest.fixture(scope="module")
def simulated(articles, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    facts = nd.write_simulated_mind(articles, nd.ClickModel(**SMALL), out)
    return out, facts


def test_articles_are_the_real_corpus(articles):
    assert len(articles) == 3824
    assert set(articles.outlet) == set(nd.OUTLETS.values())
    assert 900 <= int(np.sum(articles.section != "")) <= 1700
    assert articles.date.min() >= np.datetime64("2016-04-01") and \
        articles.date.max() == np.datetime64("2017-03-30")
    assert articles.title[0].startswith("Betsy DeVos Confirmed")


def test_simulator_is_deterministic_per_seed(articles, simulated, tmp_path):
    out, _ = simulated
    again = tmp_path / "again"
    nd.write_simulated_mind(articles, nd.ClickModel(**SMALL), again)
    for f in ("train/behaviors.tsv", "dev/behaviors.tsv", "test/news.tsv", "simulation.json"):
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    other = tmp_path / "other"
    nd.write_simulated_mind(articles, nd.ClickModel(**{**SMALL, "seed": 4}), other)
    behaviors = "train/behaviors.tsv"
    assert (other / behaviors).read_bytes() != (out / behaviors).read_bytes()


def test_simulated_files_are_labelled_and_split_by_users_and_time(simulated):
    out, facts = simulated
    assert "SIMULATED" in (out / "README.md").read_text()
    assert all("SIMULATED" in (out / d / "README.md").read_text() for d in ("train", "dev", "test"))
    assert facts["clicks"].startswith("simulated") and \
        json.loads((out / "simulation.json").read_text())["clicks"] == facts["clicks"]
    data = nd.load_mind(out)
    assert data.simulated["clicks"].startswith("simulated")
    users = {k: set(b.user_id) for k, b in data.splits.items()}
    assert not users["train"] & users["valid"] and not users["train"] & users["test"]
    assert not users["valid"] & users["test"]
    later = min(data.splits[s].time.min() for s in ("valid", "test"))
    assert data.splits["train"].time.max() < later
    for b in data.splits.values():  # MIND-like: every impression has a click and a non-click
        assert all(0 < lab.sum() < len(lab) for lab in b.labels)


def _ctr_by_position(data):
    clicks, shown = np.zeros(30), np.zeros(30)
    for b in data.splits.values():
        for lab in b.labels:
            clicks[:len(lab)] += lab
            shown[:len(lab)] += 1
    return clicks / np.maximum(shown, 1)


def test_simulator_biases_are_present(simulated, articles):
    out, _ = simulated
    data = nd.load_mind(out)
    ctr = _ctr_by_position(data)
    assert ctr[0] > 1.5 * ctr[9] and ctr[0] > ctr[4] > ctr[9]            # position bias
    topic = np.array([int(c[len("topic"):]) for c in data.news.category])
    fav, rest = [0, 0], [0, 0]                                          # topic preferences
    for b in data.splits.values():
        for h, cands, lab in zip(b.history, b.candidates, b.labels):
            if len(h) < 3:
                continue
            top = np.argmax(np.bincount(topic[h], minlength=topic.max() + 1))
            hit = topic[cands] == top
            fav[0] += lab[hit].sum()
            fav[1] += hit.sum()
            rest[0] += lab[~hit].sum()
            rest[1] += (~hit).sum()
    assert fav[0] / fav[1] > 2.0 * rest[0] / rest[1]
    # Recency: with everything else equal, clicked articles are younger than unclicked ones.
    usable = np.flatnonzero([bool(t) and bool(x) for t, x in zip(articles.title, articles.text)])
    arts = articles.take(usable)
    model = nd.ClickModel(**{**SMALL, "topics": 1, "quality_std": 0.0, "position_decay": 0.0,
                             "recency_days": 0.5})
    log = nd.simulate_clicks(arts, np.zeros(len(arts), np.int64), model)
    published = arts.date.astype("datetime64[s]").astype(np.int64)
    age = [(t - published[s]) / 86400 for t, s in zip(log.time, log.shown)]
    clicked = np.mean([a[c].mean() for a, c in zip(age, log.clicked)])
    skipped = np.mean([a[~c].mean() for a, c in zip(age, log.clicked)])
    assert clicked < skipped - 0.1


# -------------------------------------------------------------------------------- MIND reader
NEWS_TSV = (
    "N55528\tlifestyle\tlifestyleroyals\tThe Brands Queen Elizabeth, Prince Charles, and Prince "
    "Philip Swear By\tShop the notebooks, jackets, and more that the royals can't live without."
    "\thttps://assets.msn.com/labs/mind/AAGH0ET.html\t[{\"Label\": \"Prince Philip, Duke of "
    "Edinburgh\", \"Type\": \"P\", \"WikidataId\": \"Q80976\", \"Confidence\": 1.0, "
    "\"OccurrenceOffsets\": [48], \"SurfaceForms\": [\"Prince Philip\"]}]\t[]\n"
    "N19639\thealth\tweightloss\t50 Worst Habits For Belly Fat\tThese seemingly harmless habits "
    "are holding you back.\thttps://assets.msn.com/labs/mind/AAB19MK.html\t[]\t[]\n"
    "N61837\tnews\tnewsworld\tThe Cost of Trump's Aid Freeze in the Trenches of Ukraine's War\t"
    "Lt. Ivan Molchanets peeked over a parapet.\thttps://assets.msn.com/labs/mind/AAJgNsz.html"
    "\t[]\t[]\n"
    "N53526\thealth\tvoices\tI Was An NBA Wife. Here's How It Affected My Mental Health.\tI "
    "felt like I was a fraud.\thttps://assets.msn.com/labs/mind/AACk2N6.html\t[]\t[]\n")
BEHAVIORS_TSV = (
    "1\tU13740\t11/11/2019 9:05:58 AM\tN55528 N19639\tN61837-0 N53526-1 N19639-0\n"
    "2\tU91836\t11/12/2019 6:11:30 PM\tN61837\tN55528-0 N53526-0 N19639-1\n"
    "3\tU73700\t11/14/2019 7:01:48 AM\t\tN61837-1 N55528-0\n"
    "4\tU34670\t11/15/2019 5:28:05 AM\tN53526\tN19639-0 N61837-1 N55528-0\n")
# Every user again a day later: held-out users have impressions after any time cut.
TWO_DAYS = BEHAVIORS_TSV + "".join(
    "\t".join([str(i + 4), fields[1], f"11/16/2019 {i}:00:00 PM", *fields[3:]]) + "\n"
    for i, fields in enumerate((line.split("\t") for line in BEHAVIORS_TSV.splitlines()), 1))


def write_mind(folder: Path, news=NEWS_TSV, behaviors=BEHAVIORS_TSV) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "news.tsv").write_text(news, encoding="utf-8")
    (folder / "behaviors.tsv").write_text(behaviors, encoding="utf-8")
    return folder


def test_mind_reader_parses_the_upstream_format(tmp_path):
    cat = nd.NewsCatalogue()
    assert nd.read_news_tsv(write_mind(tmp_path) / "news.tsv", cat) == 4
    assert cat.ids == ["N55528", "N19639", "N61837", "N53526"]
    assert cat.title[1] == "50 Worst Habits For Belly Fat" and cat.category[0] == "lifestyle"
    b = nd.read_behaviors_tsv(tmp_path / "behaviors.tsv", cat)
    assert list(b.impression_id) == ["1", "2", "3", "4"] and b.user_id[0] == "U13740"
    assert list(b.history[0]) == [0, 1] and len(b.history[2]) == 0
    assert list(b.candidates[0]) == [2, 3, 1] and list(b.labels[0]) == [0, 1, 0]
    import datetime as dt
    assert b.time[1] == int(dt.datetime(2019, 11, 12, 18, 11, 30,
                                        tzinfo=dt.timezone.utc).timestamp())
    assert nd.mind_time(b.time[1]) == "11/12/2019 6:11:30 PM"


def test_mind_layouts_single_folder_small_and_labelled_test(tmp_path):
    one = nd.load_mind(write_mind(tmp_path / "one", behaviors=TWO_DAYS), valid_users=0.25,
                       test_users=0.25, time_split=0.5, seed=0)
    assert {k: len(b) for k, b in one.splits.items()} == {"train": 2, "valid": 1, "test": 1}
    assert one.splits["train"].time.max() < one.splits["test"].time.min()
    small = tmp_path / "small"
    write_mind(small / "MINDsmall_train", behaviors=TWO_DAYS)
    write_mind(small / "MINDsmall_dev", news=NEWS_TSV.replace("N19639", "N70000"),
               behaviors=BEHAVIORS_TSV.replace("N19639", "N70000"))
    data = nd.load_mind(small, valid_users=0.25, time_split=0.5)
    assert len(data.news) == 5                      # shared ids read once
    assert len(data.splits["test"]) == 4 and "N70000" in data.news.index
    assert "MINDsmall_dev" in data.split_rule
    assert not set(data.splits["train"].user_id) & set(data.splits["valid"].user_id)
    labelled = tmp_path / "labelled"
    for d in ("train", "dev", "test"):
        write_mind(labelled / d)
    data = nd.load_mind(labelled)
    assert all(len(b) == 4 for b in data.splits.values()) and "as given" in data.split_rule


@pytest.mark.parametrize("file,old,new,message", [
    ("behaviors", "\tN55528 N19639\t", "\t", "behaviors.tsv:1: 4 tab-separated fields; expected 5"),
    ("behaviors", "N53526-1", "N53526-x", "behaviors.tsv:1: field impressions: 'N53526-x'"),
    ("behaviors", "N53526-1", "N53526", "unlabelled impressions"),
    ("behaviors", "\tN61837\t", "\tN999\t", "behaviors.tsv:2: field history: news id 'N999'"),
    ("behaviors", "N55528-0 N53526-0", "N55528-0 N12-1",
     "behaviors.tsv:2: field impressions: news id 'N12'"),
    ("behaviors", "11/14/2019 7:01:48 AM", "2019-11-14 07:01", "behaviors.tsv:3: field time"),
    ("behaviors", "\tU34670\t", "\t\t", "behaviors.tsv:4: field user_id is empty"),
    ("news", "}]\t[]\nN19639", "}]\nN19639", "news.tsv:1: 7 tab-separated fields; expected 8"),
    ("news", "\t50 Worst Habits For Belly Fat\t", "\t\t", "news.tsv:2: field title is empty"),
])
def test_malformed_mind_lines_name_file_line_and_field(tmp_path, file, old, new, message):
    text = {"news": NEWS_TSV, "behaviors": BEHAVIORS_TSV}
    assert old in text[file]
    text[file] = text[file].replace(old, new, 1)
    write_mind(tmp_path, text["news"], text["behaviors"])
    with pytest.raises(nd.MindFormatError) as e:
        nd.load_mind(tmp_path)
    assert message in str(e.value) and str(tmp_path) in str(e.value)


def test_missing_mind_files_say_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="behaviors.tsv \\+ news.tsv"):
        nd.load_mind(tmp_path)
    (tmp_path / "behaviors.tsv").write_text(BEHAVIORS_TSV)
    with pytest.raises(FileNotFoundError, match="no news.tsv"):
        nd.load_mind(tmp_path)


# ---------------------------------------------------------------------------------- batches
def test_batches_resume_by_step_and_sample_negatives_from_the_same_impression(simulated):
    out, _ = simulated
    data = nd.load_mind(out)
    split = nd.ImpressionSplit.from_behaviors(data.splits["train"], max_history=6)
    tokens = np.arange(len(data.news) + 1, dtype=np.int32)[:, None].repeat(3, 1)  # row i -> i
    batches = nd.NewsBatches(tokens, split, batch_size=16, negatives=4)
    stream = batches.train(seed=5)
    first = [next(stream) for _ in range(4)]
    resumed = next(batches.train(seed=5, start_step=3))
    for k in first[3]:
        np.testing.assert_array_equal(resumed[k], first[3][k])
    for batch in first:
        assert batch["candidates"].shape == (16, 5, 3) and np.all(batch["label"][:, 0] == 1)
        news = batch["candidates"][..., 0]  # the news index + 1 of each candidate
        for row in range(16):
            match = [i for i in range(len(split)) if news[row, 0] in split.candidates[i]]
            ok = any(set(news[row][batch["candidate_mask"][row]]) <= set(split.candidates[i])
                     and split.labels[i][list(split.candidates[i]).index(news[row, 0])] == 1
                     and all(split.labels[i][list(split.candidates[i]).index(n)] == 0
                             for n in news[row, 1:][batch["candidate_mask"][row, 1:]])
                     for i in match)
            assert ok, row
    seen, weight = [], []
    for batch in nd.NewsBatches(tokens, split, batch_size=64).eval():
        seen.append(batch["candidate_news"][batch["weight"] > 0])
        weight.append(batch["weight"])
    assert sum(len(s) for s in seen) == len(split) and np.concatenate(weight).sum() == len(split)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    cfg = compose_config(["+task=news_feed"])
    return run(cfg, workdir=tmp_path_factory.mktemp("news_run"))


def test_debug_run_trains_on_8_devices_and_reports_mind_metrics(fast_run):
    assert jax.device_count() == 8 and fast_run["environment"]["devices"] == 8
    m = fast_run["metrics"]
    for split in ("valid", "test"):
        for k in ("auc", "mrr", "ndcg@5", "ndcg@10"):
            assert 0.0 < m[f"{split}/{k}"] <= 1.0, (split, k)
    assert fast_run["objective"]["name"] == "valid/auc"
    data = fast_run["data"]
    assert data["clicks"].startswith("simulated") and "News Articles" in data["articles"]
    assert data["simulation"]["clicks"].startswith("simulated")
    for name in ("popularity", "recency"):
        assert set(data["baselines"][name]) == {f"{s}/{k}" for s in ("valid", "test")
                                                for k in ("auc", "mrr", "ndcg@5", "ndcg@10")}
    log = [json.loads(line) for line in Path(fast_run["paths"]["metrics_log"]).read_text()
           .splitlines()]
    assert any("train/loss" in r and np.isfinite(r["train/loss"]) for r in log)
    assert data["train_users"] and not (data["valid_oov_word_rate"] > 0.5)


@pytest.fixture(scope="module")
def built():
    """The debug-sized task and freshly initialised variables (what evaluation and export
    read from a train state)."""
    from types import SimpleNamespace

    from mlsd_jax import tasks
    from mlsd_jax.tasks.base import init_variables

    cfg = compose_config(["+task=news_feed", "task.baselines=false"])
    task = tasks.build(cfg)
    example = {k: v[:1] for k, v in task.inputs(task.example_batch).items()}
    variables = jax.jit(lambda key: init_variables(task.model, task.forward, {}, example, key))(
        jax.random.key(0))
    return cfg, task, SimpleNamespace(variables=nn.meta.unbox(variables), consts={})


def test_evaluator_encoding_each_news_once_equals_the_forward_path(built):
    _, task, state = built
    fast = task.evaluator(None, state, "valid")
    forward = jax.jit(lambda v, x: task.forward(
        lambda *a, **kw: task.model.apply(v, *a, **kw), {}, x, train=False)["scores"])
    slow = nf.evaluate_scorer(task.metrics, task.eval_splits["valid"](), lambda b: np.asarray(
        forward(state.variables, {k: b[k] for k in nf.INPUT_KEYS})))
    assert set(fast) == set(slow) == {"auc", "mrr", "ndcg@5", "ndcg@10"}
    for k in fast:
        assert fast[k] == pytest.approx(slow[k], abs=1e-5), k
    assert 0.3 < fast["auc"] < 0.7   # untrained


@pytest.mark.slow
def test_export_round_trip_on_raw_titles(built, tmp_path):
    from mlsd_jax.export import export_model, load_bundle, saved_model_predict
    from mlsd_jax.tasks.base import run_forward

    cfg, task, state = built
    path = export_model(task, state, tmp_path)
    # Raw titles of real validation impressions, as a client sends them, plus edge cases.
    data = nf._load(cfg.data)
    split = nd.ImpressionSplit.from_behaviors(data.splits["valid"], cfg.data.max_history)
    raw = nf.raw_inputs(data, split, np.arange(6))
    raw["history_titles"][1] = ""                                      # no history
    raw["candidate_titles"][2, 0] = "Zyxwvut qqqq unseenword headline"  # only unseen words
    bundle = load_bundle(path)
    fast = bundle.predict(raw)["scores"]
    saved = saved_model_predict(path, raw)["scores"]
    encoded = bundle.encode(raw)
    variables = jax.device_get(state.variables)
    want, _ = run_forward(task.model, task.forward, variables, {}, encoded, train=False)
    mask = encoded["candidate_mask"]
    assert fast.shape == saved.shape == raw["candidate_titles"].shape
    assert np.all(np.isfinite(fast)) and np.all(fast[~mask] == -1e9)
    np.testing.assert_allclose(saved[mask], fast[mask], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fast, np.asarray(want["scores"]), rtol=1e-5, atol=1e-5)
    # The training pipeline's batch of the same impressions (tokens gathered from the fitted
    # vocabulary in numpy) scores the unmodified rows the same.
    batch = next(task.eval_splits["valid"]())
    train_path, _ = run_forward(task.model, task.forward, variables, {},
                                {k: batch[k] for k in nf.INPUT_KEYS}, train=False)
    keep = [0, 3, 4, 5]
    np.testing.assert_allclose(np.asarray(train_path["scores"])[keep][:, :fast.shape[1]],
                               fast[keep], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ quality
@pytest.mark.slow
def test_default_run_beats_popularity_and_recency_on_held_out_users(tmp_path):
    """The default NRMS run, early-stopped on validation AUC, against the two baselines scored
    on the same held-out (simulated) test users by the same metric code: the bars come from the
    baselines, not from the model."""
    cfg = compose_config(["+task=news_feed", "export.enabled=false", "trainer.progress=false"],
                         tiny=False)
    results = run(cfg, workdir=tmp_path)
    m, base = results["metrics"], results["data"]["baselines"]
    for k, margin in (("auc", 0.05), ("ndcg@10", 0.02), ("mrr", 0.02)):
        bar = max(base["popularity"][f"test/{k}"], base["recency"][f"test/{k}"]) + margin
        assert m[f"test/{k}"] > bar, (k, m, base)


@pytest.mark.slow
def test_quality_benchmark_quick_mode_writes_its_results(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "news_feed_quality.py"), "--quick",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "news_feed_quality_quick.json").read_text())
    assert {r["model"] for r in summary["summary"]} >= {"popularity", "recency"}
    assert "simulated" in (tmp_path / "news_feed_quality_quick.md").read_text().lower()
