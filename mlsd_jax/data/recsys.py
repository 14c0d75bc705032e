"""Implicit-feedback recommendation data: per-user splits, negative samplers, batch streams.

Every interaction counts as a positive (no rating threshold, as RecBole reads MovieLens). Users
and items are indexed ``0..U-1`` / ``0..I-1`` by first appearance; the *catalogue* is every item
of the data set, so full ranking scores all ``I`` items (as RecBole does), also those that
happen to appear only in validation or test.

Splits (``rows`` are indices into the interaction arrays):

* :func:`ratio_split`: RecBole's ``RS [0.8, 0.1, 0.1]``, ``group_by user``, ``order RO``: each
  user's interactions in a seeded random order, cut by RecBole's own rounding
  (:func:`ratio_split_counts`: valid and test rounded down, the rest to train).
* :func:`leave_last_out`: time-ordered (stable on timestamp ties, file order breaking them): a
  user's latest interaction is test, the one before it valid (NCF and RecBole's ``LS``); a user
  with two interactions gives train and test, one with a single interaction only train.

Samplers: uniform training negatives resampled until they are not among the user's training
items (RecBole's uniform sampler), and the NCF protocol's fixed evaluation negatives (drawn once
by a seeded generator, never a positive of the user in any split, no repeats).

Streams are indexed by step (exact resume): step ``s`` of epoch ``e`` reads rows
``permutation(seed, e)[s * B:(s + 1) * B]``; the random draws of a step (negatives) use a
generator seeded by ``(seed, step)``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

__all__ = ["SPLITS", "Interactions", "RecsysDataError", "UserItems", "eval_negatives",
           "history_windows", "index_interactions", "leave_last_out", "position_in_user",
           "ratio_split", "ratio_split_counts", "sample_negatives", "time_order", "train_stream",
           "user_items"]

SPLITS = ("train", "valid", "test")


class RecsysDataError(ValueError):
    """Interactions that cannot be split or sampled as configured (names what is missing)."""


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Interactions as indices, with the raw ids they stand for.

    Attributes:
      user, item: ``[N]`` int32 indices into ``user_ids`` / ``item_ids``.
      timestamp: ``[N]`` int64.
      user_ids, item_ids: ``[U]`` / ``[I]`` raw id strings (first-appearance order).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, uniques)`` with uniques in first-appearance order."""
    uniques, first, codes = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[codes].astype(np.int32), uniques[order]


def index_interactions(user_id: np.ndarray, item_id: np.ndarray,
                       timestamp: np.ndarray) -> Interactions:
    """Raw id columns -> :class:`Interactions`; a repeated (user, item) pair is an error."""
    user_id, item_id = np.asarray(user_id).astype(str), np.asarray(item_id).astype(str)
    if not len(user_id):
        raise RecsysDataError("no interactions to index")
    users, user_ids = _factorize(user_id)
    items, item_ids = _factorize(item_id)
    keys = users.astype(np.int64) * len(item_ids) + items
    uniq, counts = np.unique(keys, return_counts=True)
    if np.any(counts > 1):
        k = int(uniq[np.argmax(counts > 1)])
        raise RecsysDataError(
            f"user {str(user_ids[k // len(item_ids)])!r} has item "
            f"{str(item_ids[k % len(item_ids)])!r} "
            f"{int(counts.max())} times; expected each (user, item) pair once (implicit feedback). "
            "Deduplicate the interactions first")
    return Interactions(users, items, np.asarray(timestamp, np.int64), user_ids, item_ids)


# ------------------------------------------------------------------------------------- splits
def ratio_split_counts(total: int, ratios: Sequence[float]) -> list[int]:
    """Part sizes of ``total`` items, exactly as RecBole's ``Dataset._calcu_split_ids``.

    Every part after the first is rounded down; the first takes the rest. A part whose exact
    share is in ``(0, 1)`` still gets one item while the first part keeps more than one.
    """
    ratios = np.asarray(ratios, np.float64)
    if ratios.ndim != 1 or len(ratios) < 2 or np.any(ratios < 0) or ratios.sum() <= 0:
        raise RecsysDataError(f"data.ratios={list(ratios)}: expected >= 2 non-negative weights "
                              "(train, valid, test)")
    ratios = ratios / ratios.sum()
    cnt = [int(r * total) for r in ratios]
    cnt[0] = total - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def _by_user(user: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows grouped by user (stable in ``order``) and the group boundaries."""
    rows = order[np.argsort(user[order], kind="stable")]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(user, minlength=int(user.max()) + 1))])
    return rows, bounds


def ratio_split(inter: Interactions, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                seed: int = 0) -> dict[str, np.ndarray]:
    """RecBole ``RS`` + ``group_by user`` + ``order RO``: sorted row indices per split."""
    if len(ratios) != 3:
        raise RecsysDataError(f"data.ratios={list(ratios)}: expected three weights "
                              "(train, valid, test)")
    perm = np.random.default_rng(seed).permutation(len(inter))
    rows, bounds = _by_user(inter.user, perm)
    parts: dict[str, list] = {s: [] for s in SPLITS}
    for u in range(len(bounds) - 1):
        group = rows[bounds[u]:bounds[u + 1]]
        cuts = np.cumsum(ratio_split_counts(len(group), ratios))[:-1]
        for name, part in zip(SPLITS, np.split(group, cuts)):
            parts[name].append(part)
    return {s: np.sort(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def time_order(inter: Interactions) -> np.ndarray:
    """Row indices sorted by user, then timestamp; file order breaks timestamp ties."""
    return np.lexsort((np.arange(len(inter)), inter.timestamp, inter.user))


def leave_last_out(inter: Interactions) -> dict[str, np.ndarray]:
    """Time-ordered leave-one-out: latest -> test, the one before -> valid, rest -> train."""
    rows = time_order(inter)
    counts = np.bincount(inter.user, minlength=inter.num_users)
    end = np.cumsum(counts)
    test = rows[end[counts >= 2] - 1]
    valid = rows[end[counts >= 3] - 2]
    held = np.zeros(len(inter), bool)
    held[test] = held[valid] = True
    return {"train": np.flatnonzero(~held).astype(np.int64), "valid": np.sort(valid),
            "test": np.sort(test)}


# ---------------------------------------------------------------------------- user item lists
@dataclasses.dataclass(frozen=True)
class UserItems:
    """Each user's items (CSR), in time order within a user.

    ``items[indptr[u]:indptr[u + 1]]`` are user ``u``'s items; ``keys`` (sorted
    ``user * num_items + item``) answers membership questions for whole arrays at once.
    """

    indptr: np.ndarray
    items: np.ndarray
    num_items: int

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)

    def of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user]:self.indptr[user + 1]]

    @property
    def keys(self) -> np.ndarray:
        keys = self.__dict__.get("_keys")
        if keys is None:
            users = np.repeat(np.arange(len(self.indptr) - 1, dtype=np.int64), self.counts)
            keys = np.sort(users * self.num_items + self.items)
            object.__setattr__(self, "_keys", keys)
        return keys

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether ``items[j]`` is among ``users[j]``'s items (arrays broadcast)."""
        users, items = np.broadcast_arrays(np.asarray(users, np.int64), np.asarray(items, np.int64))
        q = users * self.num_items + items
        keys = self.keys
        pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
        return (keys[pos] == q) if len(keys) else np.zeros(q.shape, bool)

    def dense(self, users: np.ndarray) -> np.ndarray:
        """``[len(users), num_items]`` bool: the users' items as a mask over the catalogue."""
        out = np.zeros((len(users), self.num_items), bool)
        counts = self.counts[users]
        rows = np.repeat(np.arange(len(users)), counts)
        starts = self.indptr[users]
        pos = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        out[rows, self.items[np.repeat(starts, counts) + pos]] = True
        return out


def user_items(inter: Interactions, rows: np.ndarray) -> UserItems:
    """:class:`UserItems` of the interactions ``rows`` (every user of ``inter`` has a row)."""
    rows = np.asarray(rows, np.int64)
    order = rows[np.lexsort((rows, inter.timestamp[rows], inter.user[rows]))]
    counts = np.bincount(inter.user[order], minlength=inter.num_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return UserItems(indptr, inter.item[order].astype(np.int32), inter.num_items)


def position_in_user(inter: Interactions, rows: np.ndarray, seqs: UserItems) -> np.ndarray:
    """For each of ``rows``, its index in its user's time-ordered list ``seqs`` (built from a
    superset of ``rows`` by :func:`user_items`)."""
    order = np.lexsort((rows, inter.timestamp[rows], inter.user[rows]))
    pos = np.empty(len(rows), np.int64)
    sorted_users = inter.user[rows[order]]
    counts = np.bincount(sorted_users, minlength=inter.num_users)
    starts = np.cumsum(counts) - counts
    pos[order] = np.arange(len(rows)) - starts[sorted_users]
    if np.any(seqs.items[seqs.indptr[inter.user[rows]] + pos] != inter.item[rows]):
        raise ValueError("position_in_user: rows are not the interactions seqs was built from")
    return pos


def history_windows(seqs: UserItems, users: np.ndarray, ends: np.ndarray, length: int,
                    skip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The last ``length`` items before position ``ends[j]`` of ``users[j]``'s list.

    ``skip[j]`` (optional) is a position left out of the window (the training target when the
    history is "every other known item", as under a random split). Returns ``(items [B, length]
    int32, mask [B, length] bool)``, left-aligned in time order; rows with fewer items are padded
    with item -1 and mask false.
    """
    users, ends = np.asarray(users, np.int64), np.asarray(ends, np.int64)
    width = length + (skip is not None)
    starts = seqs.indptr[users]
    pos = ends[:, None] - width + np.arange(width)[None, :]
    valid = pos >= 0
    if skip is not None:
        valid &= pos != np.asarray(skip, np.int64)[:, None]
    keep = valid & (np.cumsum(valid[:, ::-1], axis=1)[:, ::-1] <= length)
    slot = np.cumsum(keep, axis=1) - 1
    out = np.full((len(users), length), -1, np.int32)
    rows, cols = np.nonzero(keep)
    out[rows, slot[rows, cols]] = seqs.items[starts[rows] + pos[rows, cols]]
    return out, out >= 0


# ------------------------------------------------------------------------------------ samplers
def sample_negatives(rng: np.random.Generator, users: np.ndarray, num: int, num_items: int,
                     exclude: UserItems) -> np.ndarray:
    """``[B, num]`` items drawn uniformly from the catalogue, redrawn while among the user's
    ``exclude`` items (repeats across draws allowed, as RecBole's uniform sampler)."""
    users = np.asarray(users, np.int64)
    full = exclude.counts[users] >= num_items
    if np.any(full):
        raise RecsysDataError(f"user index {int(users[np.argmax(full)])} has interacted with all "
                              f"{num_items} items; no negative item exists for it")
    out = rng.integers(0, num_items, size=(len(users), num))
    bad = np.nonzero(exclude.contains(users[:, None], out))
    while len(bad[0]):
        out[bad] = rng.integers(0, num_items, size=len(bad[0]))
        still = exclude.contains(users[bad[0]], out[bad])
        bad = (bad[0][still], bad[1][still])
    return out.astype(np.int32)


def eval_negatives(seed: int, users: np.ndarray, num: int, num_items: int,
                   positives: UserItems) -> np.ndarray:
    """NCF evaluation negatives: ``[len(users), num]`` distinct items per user, none of them
    among the user's ``positives`` (all splits), drawn once by a generator seeded with ``seed``."""
    users = np.asarray(users, np.int64)
    short = num_items - positives.counts[users] < num
    if np.any(short):
        u = int(users[np.argmax(short)])
        raise RecsysDataError(f"user index {u} has only {num_items - positives.counts[u]} items "
                              f"it never interacted with; the protocol needs {num} negatives")
    rng = np.random.default_rng(seed)
    out = np.zeros((len(users), num), np.int64)
    todo = np.arange(len(users))
    while len(todo):
        draw = rng.integers(0, num_items, size=(len(todo), 2 * num + 8))
        ok = ~positives.contains(users[todo][:, None], draw)
        order = np.argsort(draw, axis=1, kind="stable")
        srt = np.take_along_axis(draw, order, axis=1)
        first = np.ones_like(ok)
        dup = np.zeros_like(ok)
        dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
        np.put_along_axis(first, order, ~dup, axis=1)
        ok &= first
        enough = ok.sum(1) >= num
        rows = np.flatnonzero(enough)
        rank = np.cumsum(ok[rows], axis=1)
        take = ok[rows] & (rank <= num)
        out[todo[rows]] = draw[rows][take].reshape(len(rows), num)
        todo = todo[~enough]
    return out.astype(np.int32)


# ------------------------------------------------------------------------------------- streams
def train_stream(num_rows: int, batch_size: int, seed: int, start_step: int,
                 make_batch: Callable[[np.ndarray, np.random.Generator], dict]
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches indexed by step: this process's rows of each step.

    ``make_batch(rows, rng)`` builds the batch of the training rows ``rows`` with ``rng``
    seeded by ``(seed, step)`` (negatives and other draws), so a resumed run reads exactly the
    batches it would have read.
    """
    n_proc, proc = jax.process_count(), jax.process_index()
    if batch_size % n_proc:
        raise RecsysDataError(f"trainer.batch_size={batch_size} must divide over {n_proc} "
                              "processes")
    local = batch_size // n_proc
    mine = np.arange(num_rows)[proc::n_proc]
    if len(mine) < local:
        raise RecsysDataError(f"the training split has {len(mine)} interactions for this "
                              f"process; a batch needs {local} (lower trainer.batch_size)")
    per_epoch = len(mine) // local
    step = start_step
    while True:
        epoch, k = divmod(step, per_epoch)
        rows = np.random.default_rng([seed, epoch]).permutation(mine)[k * local:(k + 1) * local]
        batch = make_batch(rows, np.random.default_rng([seed, step, 1]))
        batch["weight"] = np.ones(len(rows), np.float32)
        yield batch
        step += 1
