"""Ranking list pipelines on the real MSLR sample: batch-at-a-time gathering, its order and rules.

The batches are checked against the store's own documents (each list is located by content, not
by the pipeline's own bookkeeping) and against the per-record reference pipeline.
"""
import collections

import numpy as np
import pytest

from mlsd_jax.data import lists
from mlsd_jax.data.letor import QueryStore
from mlsd_jax.data.ranking import load_ranking_splits

L = 128


@pytest.fixture(scope="module")
def splits():
    return load_ranking_splits("mslr_sample")


@pytest.fixture(scope="module")
def train(splits):
    return splits["train"]


class Locator:
    """Finds which query (and which of its documents, in order) a padded list came from."""

    def __init__(self, store):
        self.store = store
        self.where = collections.defaultdict(list)
        for q in range(len(store)):
            f, y = store.query(q)
            for j in range(len(y)):
                self.where[np.asarray(f[j], np.float32).tobytes()].append((q, j))

    def __call__(self, features, labels, mask):
        rows = np.asarray(features)[mask]
        assert rows.size, "an all-masked list"
        cands = [self.where[r.tobytes()] for r in rows]
        assert all(cands), "a list holds a document that is not in the store"
        queries = set.intersection(*({q for q, _ in c} for c in cands))
        assert len(queries) == 1, f"a list mixes documents of queries {queries}"
        q = queries.pop()
        docs, last = [], -1
        for c in cands:  # increasing positions (the store has one duplicated row)
            last = min(j for qq, j in c if qq == q and j > last)
            docs.append(last)
        f, y = self.store.query(q)
        np.testing.assert_array_equal(np.asarray(labels)[mask], np.asarray(y)[docs])
        np.testing.assert_array_equal(rows, np.asarray(f, np.float32)[docs])
        return q, docs


def check_padding(batch, list_size):
    """Masked-out slots are zero, real items come first, shapes and dtypes are fixed."""
    f, y, m = batch["features"], batch["label"], batch["mask"]
    assert f.dtype == np.float32 and y.dtype == np.float32 and m.dtype == bool
    assert f.shape[1] == y.shape[1] == m.shape[1] == list_size
    counts = m.sum(1)
    np.testing.assert_array_equal(m, np.arange(list_size) < counts[:, None])
    assert not f[~m].any() and not y[~m].any()


# ------------------------------------------------------------------------------------ train


def test_lists_are_the_stores_documents_padded_like_pad_list(train):
    locate = Locator(train)
    sizes = train.list_sizes
    batcher = lists.TrainBatcher(train, list_size=L, batch_size=8, seed=0)
    seen_long = 0
    for step in range(10):
        batch = batcher[step]
        check_padding(batch, L)
        queries, docs, mask = batcher.plan(step)
        for r in range(8):
            q, kept = locate(batch["features"][r], batch["label"][r], batch["mask"][r])
            assert q == queries[r]
            n = sizes[q]
            if n <= L:
                assert kept == list(range(n))  # whole list, in the store's order
            else:
                seen_long += 1
                assert len(kept) == L and len(set(kept)) == L  # subsample without replacement
            np.testing.assert_array_equal(docs[r][mask[r]], kept)
            # The same list padded one at a time, as the per-record pipeline does.
            f, y = train.query(q)
            ref = lists.pad_list(np.asarray(f)[kept], np.asarray(y)[kept], L)
            for k in ref:
                np.testing.assert_array_equal(batch[k][r], ref[k], err_msg=k)
    assert seen_long > 0  # the MSLR sample has lists longer than 128


def test_each_epoch_is_a_fresh_seeded_permutation(train):
    Q = len(train)
    epochs = {}
    for seed in (0, 1):
        batcher = lists.TrainBatcher(train, list_size=L, batch_size=Q, seed=seed)
        # With a batch of Q lists, step e is exactly epoch e.
        epochs[seed] = [batcher.records(e)[0] for e in range(3)]
        for e, order in enumerate(epochs[seed]):
            assert sorted(order) == list(range(Q))
            np.testing.assert_array_equal(batcher.records(e)[1], e)
        assert not np.array_equal(epochs[seed][0], epochs[seed][1])
    assert not np.array_equal(epochs[0][0], epochs[1][0])
    # Same seed, other batch size: the same record stream.
    b7 = lists.TrainBatcher(train, list_size=L, batch_size=7, seed=0)
    stream = np.concatenate([b7.records(s)[0] for s in range(-(-3 * Q // 7))])[:3 * Q]
    np.testing.assert_array_equal(stream, np.concatenate(epochs[0]))


def test_per_record_reference_covers_the_same_lists(train):
    """One epoch of the per-record pipeline and of the batched one hold the same queries, with
    identical padded lists wherever no subsampling happens."""
    Q = len(train)
    locate = Locator(train)
    old = lists.per_record_train_batches(train, list_size=L, batch_size=1, seed=0, num_threads=0)
    new = lists.TrainBatcher(train, list_size=L, batch_size=1, seed=0)
    got = {"old": {}, "new": {}}
    for step in range(Q):
        for name, batch in (("old", next(old)), ("new", new[step])):
            check_padding(batch, L)
            q, kept = locate(batch["features"][0], batch["label"][0], batch["mask"][0])
            assert q not in got[name]  # each query once per epoch
            got[name][q] = (kept, batch)
    assert set(got["old"]) == set(got["new"]) == set(range(Q))
    for q in range(Q):
        (k_old, b_old), (k_new, b_new) = got["old"][q], got["new"][q]
        assert len(k_old) == len(k_new) == min(train.list_sizes[q], L)
        if train.list_sizes[q] <= L:
            for k in b_old:
                np.testing.assert_array_equal(b_old[k], b_new[k], err_msg=k)


def test_resume_at_step_s_is_the_sth_batch_of_a_fresh_stream(train):
    kw = dict(list_size=L, batch_size=8, seed=3)
    fresh = lists.train_batches(train, **kw)
    want = [next(fresh) for _ in range(12)]  # 12 x 8 lists: almost three epochs
    ds = lists.train_dataset(train, **kw)
    for s in (0, 4, 5, 11):
        for resumed in (next(lists.train_batches(train, start_step=s, **kw)),
                        next(lists.train_batches(train, start_step=s, num_threads=0, prefetch=0,
                                                 **kw)),
                        ds[s]):
            for k in want[s]:
                np.testing.assert_array_equal(resumed[k], want[s][k], err_msg=f"step {s} {k}")
    assert not np.array_equal(want[0]["features"], want[1]["features"])


def test_long_lists_are_subsampled_afresh_each_epoch_and_uniformly(train):
    Q, small = len(train), 32
    batcher = lists.TrainBatcher(train, list_size=small, batch_size=Q, seed=0)
    sizes = train.list_sizes
    q_long = int(np.argmax(sizes))  # 308 documents
    n_epochs = 300
    kept = np.zeros((n_epochs, sizes[q_long]), bool)
    for e in range(n_epochs):
        queries, docs, mask = batcher.plan(e)
        assert mask.sum(1).tolist() == np.minimum(sizes[queries], small).tolist()
        r = int(np.flatnonzero(queries == q_long)[0])
        assert np.all(np.diff(docs[r]) > 0)  # sorted, no repeats
        kept[e, docs[r]] = True
    assert len({k.tobytes() for k in kept}) == n_epochs  # a new subsample every epoch
    # Uniform without replacement: every document kept with probability 32/308.
    freq = kept.mean(0)
    p = small / sizes[q_long]
    sd = np.sqrt(p * (1 - p) / n_epochs)
    assert np.abs(freq - p).max() < 5 * sd, (freq.min(), freq.max(), p)
    # Seeded: the same seed gives the same subsamples.
    again = lists.TrainBatcher(train, list_size=small, batch_size=Q, seed=0)
    np.testing.assert_array_equal(again.plan(7)[1], batcher.plan(7)[1])
    assert not np.array_equal(lists.TrainBatcher(train, list_size=small, batch_size=Q,
                                                 seed=1).plan(0)[1], batcher.plan(0)[1])


def test_padding_and_subsampling_on_a_small_store():
    # Queries of 3, 0, 6 and 1 documents; feature value = 10 * query + document.
    sizes = [3, 0, 6, 1]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    feats = np.concatenate([10 * q + np.arange(n) for q, n in enumerate(sizes)]).astype(np.float32)
    store = QueryStore.from_arrays(np.stack([feats, -feats], 1), feats + 0.5, offsets)
    batcher = lists.TrainBatcher(store, list_size=4, batch_size=4, seed=0)
    batch = batcher[0]
    check_padding(batch, 4)
    queries = batcher.records(0)[0]
    assert sorted(queries) == [0, 1, 2, 3]
    for r, q in enumerate(queries):
        got = batch["features"][r, batch["mask"][r], 0]
        assert len(got) == min(sizes[q], 4)
        if sizes[q] <= 4:
            np.testing.assert_array_equal(got, 10 * q + np.arange(sizes[q]))
        else:
            assert set(got) <= set(10 * q + np.arange(sizes[q])) and np.all(np.diff(got) > 0)
        np.testing.assert_array_equal(batch["label"][r, batch["mask"][r]], got + 0.5)
        np.testing.assert_array_equal(batch["features"][r, batch["mask"][r], 1], -got)
    # A store that is not a QueryStore (read list by list) gives the same batches.

    class Plain:
        num_features = 2
        list_sizes = np.asarray(sizes)

        def __len__(self):
            return len(sizes)

        def query(self, i):
            return store.query(i)

    plain = lists.TrainBatcher(Plain(), list_size=4, batch_size=4, seed=0)
    for s in range(5):
        for k, v in batcher[s].items():
            np.testing.assert_array_equal(plain[s][k], v)
    with pytest.raises(ValueError, match="no queries"):
        lists.TrainBatcher(store.subset([]), list_size=4, batch_size=4, seed=0)


def test_process_slices_are_disjoint_and_make_the_global_batch(train):
    Q = len(train)
    one = lists.TrainBatcher(train, list_size=L, batch_size=8, seed=0, process_count=1)
    for n_proc in (2, 4):
        procs = [lists.TrainBatcher(train, list_size=L, batch_size=8, seed=0, process_index=p,
                                    process_count=n_proc) for p in range(n_proc)]
        seen = [set() for _ in procs]
        for step in range(-(-Q // 8)):  # one epoch and a bit
            parts = [b[step] for b in procs]
            assert all(p["features"].shape[0] == 8 // n_proc for p in parts)
            whole = one[step]
            for k in whole:  # the slices, in process order, are the single-process batch
                np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
            recs = [b.records(step) for b in procs]
            for p, (queries, epochs) in enumerate(recs):
                seen[p] |= {int(q) for q, e in zip(queries, epochs) if e == 0}
            keys = [{(int(q), int(e)) for q, e in zip(*r)} for r in recs]
            assert sum(map(len, keys)) == len(set().union(*keys)) == 8  # disjoint within a step
        for a in range(n_proc):
            for b in range(a + 1, n_proc):
                assert not seen[a] & seen[b]
        assert set().union(*seen) == set(range(Q))  # epoch 0 covered once, across processes
    with pytest.raises(ValueError, match="divide"):
        lists.TrainBatcher(train, list_size=L, batch_size=6, seed=0, process_index=0,
                           process_count=4)


# ------------------------------------------------------------------------------------- eval


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_batches_hold_every_whole_list_once(splits, split):
    store = splits[split]
    size = lists.eval_list_size(store)
    assert size % 16 == 0 and size >= store.list_sizes.max() > size - 16
    locate = Locator(store)
    batches = list(lists.eval_batches(store, batch_size=16, list_size=size))
    assert len(batches) == -(-len(store) // 16)
    order = []
    for batch in batches:
        check_padding(batch, size)
        assert batch["features"].shape[0] == 16
        for r in range(16):
            if batch["mask"][r].any():
                q, kept = locate(batch["features"][r], batch["label"][r], batch["mask"][r])
                assert kept == list(range(store.list_sizes[q]))  # never cut
                order.append(q)
    assert order == list(range(len(store)))  # every query once, in order
    assert sum(int(b["mask"].any(1).sum()) for b in batches) == len(store)
    with pytest.raises(ValueError, match="does not fit"):
        next(lists.eval_batches(store, batch_size=16, list_size=size - 16))


def test_eval_slices_per_process(splits):
    store = splits["test"]  # 43 queries
    for batch_size, n_proc in ((16, 2), (32, 2), (16, 4)):
        whole = list(lists.eval_batches(store, batch_size=batch_size, process_count=1))
        parts = [list(lists.eval_batches(store, batch_size=batch_size, process_index=p,
                                         process_count=n_proc)) for p in range(n_proc)]
        assert [len(p) for p in parts] == [len(whole)] * n_proc == [-(-43 // batch_size)] * n_proc
        for b, w in enumerate(whole):
            for k in w:
                np.testing.assert_array_equal(np.concatenate([p[b][k] for p in parts]), w[k])
        real = [sum(int(b["mask"].any(1).sum()) for b in p) for p in parts]
        assert sum(real) == 43
    # Batches of 32 over 2 processes: the last global batch holds queries 32-42, all in process
    # 0's half; process 1 still yields its (all-masked) slice, so both run the same steps.
    last = [list(lists.eval_batches(store, batch_size=32, process_index=p, process_count=2))[-1]
            for p in range(2)]
    assert last[0]["mask"].any(1).sum() == 11 and not last[1]["mask"].any()
