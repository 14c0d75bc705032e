"""The human-review queue: predictions in a model's uncertain band wait here for a person.

An embedded SQLite database (WAL journal: an acknowledged enqueue or resolution survives a crash
of the process, ``kill -9`` included; ``synchronous="FULL"`` also survives a power loss, at an
fsync per commit), shared by every server worker and by the review
command line (``python -m experiments.review``). Each item holds the raw inputs of one row as
the client sent them (JSON), the model's score, which model and version scored it, the request
id, and when resolved the reviewer's label. :meth:`ReviewQueue.labelled` returns the resolved
rows; the moderation task reads them as extra *training* rows for its next run
(``data.review_queue=PATH``), never as validation or test rows.

The server enqueues a row when its model's outputs carry ``decision`` and the row's decision is
:data:`REVIEW` (the moderation task's export: 0 allow, 1 review, 2 block); see
``review_queue`` in ``configs/serve.yaml``.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mlsd_jax.errors import UserError
from mlsd_jax.serving.predlog import jsonable

__all__ = ["ALLOW", "BLOCK", "DECISIONS", "REVIEW", "ReviewError", "ReviewQueue"]

ALLOW, REVIEW, BLOCK = 0, 1, 2
DECISIONS = ("allow", "review", "block")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    request_id TEXT,
    inputs TEXT NOT NULL,
    score REAL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'resolved')),
    label INTEGER,
    reviewer TEXT,
    resolved_at REAL,
    note TEXT
);
CREATE INDEX IF NOT EXISTS items_status ON items (status, model, created);
"""


class ReviewError(UserError):
    """A bad review operation (unknown item, already resolved, bad label)."""


class ReviewQueue:
    """``ReviewQueue(path, synchronous="NORMAL")``: open (or create) the queue database at
    ``path`` (``synchronous``: SQLite's ``NORMAL`` or ``FULL``, as the prediction log's).

    One connection per object, guarded by a lock (the server calls it from its event loop and
    batch threads); several processes may open the same file.
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL"):
        if synchronous not in ("NORMAL", "FULL"):
            raise ReviewError(f"synchronous={synchronous!r}: expected 'NORMAL' or 'FULL'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ReviewQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------- writing
    def enqueue(self, inputs: Mapping[str, Any], score: float | None, *, model: str,
                version: str | int, request_id: str | None = None) -> int:
        """Adds one row (``inputs``: column -> that row's raw value); returns its id."""
        return self.enqueue_many([inputs], [score], model=model, version=version,
                                 request_id=request_id)[0]

    def enqueue_many(self, rows: Sequence[Mapping[str, Any]], scores: Sequence[float | None], *,
                     model: str, version: str | int, request_id: str | None = None) -> list[int]:
        """Adds rows in one transaction (committed when this returns); returns their ids."""
        if len(rows) != len(scores):
            raise ReviewError(f"enqueue: {len(rows)} rows but {len(scores)} scores")
        now = time.time()
        records = [(now, str(model), str(version), request_id,
                    json.dumps({k: jsonable(v) for k, v in row.items()}, ensure_ascii=False),
                    None if s is None else float(s)) for row, s in zip(rows, scores)]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                ids = []
                for rec in records:
                    cur.execute("INSERT INTO items (created, model, version, request_id, inputs, "
                                "score) VALUES (?, ?, ?, ?, ?, ?)", rec)
                    ids.append(int(cur.lastrowid))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return ids

    def resolve(self, item_id: int, label: int, reviewer: str = "", note: str = "") -> dict:
        """Records a person's label (0 = acceptable, 1 = violates the policy) for a pending item."""
        if isinstance(label, bool) or label not in (0, 1):
            raise ReviewError(f"resolve: field label: {label!r}; expected 0 (acceptable) or 1 "
                              f"(violates the policy)")
        with self._lock:
            row = self._db.execute("SELECT status FROM items WHERE id = ?",
                                   (int(item_id),)).fetchone()
            if row is None:
                raise ReviewError(f"resolve: item {item_id} does not exist in {self.path}")
            if row[0] != "pending":
                raise ReviewError(f"resolve: item {item_id} is already resolved")
            self._db.execute("UPDATE items SET status = 'resolved', label = ?, reviewer = ?, "
                             "resolved_at = ?, note = ? WHERE id = ? AND status = 'pending'",
                             (int(label), reviewer, time.time(), note, int(item_id)))
        return self.get(item_id)

    # ------------------------------------------------------------------------------- reading
    def _rows(self, sql: str, args: Iterable[Any]) -> list[dict]:
        with self._lock:
            cur = self._db.execute(sql, tuple(args))
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r)) for r in cur.fetchall()]
        for r in out:
            r["inputs"] = json.loads(r["inputs"])
        return out

    def get(self, item_id: int) -> dict:
        rows = self._rows("SELECT * FROM items WHERE id = ?", (int(item_id),))
        if not rows:
            raise ReviewError(f"item {item_id} does not exist in {self.path}")
        return rows[0]

    def pending(self, limit: int = 50, model: str | None = None) -> list[dict]:
        """Pending items, oldest first."""
        where, args = "status = 'pending'", []
        if model is not None:
            where, args = where + " AND model = ?", [model]
        return self._rows(f"SELECT * FROM items WHERE {where} ORDER BY created, id LIMIT ?",
                          [*args, int(limit)])

    def labelled(self, model: str | None = None, column: str = "text"
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Resolved rows as training data: ``(values of column, labels int8, item ids)``."""
        where, args = "status = 'resolved'", []
        if model is not None:
            where, args = where + " AND model = ?", [model]
        rows = self._rows(f"SELECT * FROM items WHERE {where} ORDER BY id", args)
        missing = [r["id"] for r in rows if column not in r["inputs"]]
        if missing:
            raise ReviewError(f"review items {missing[:5]} have no input {column!r}; their "
                              f"inputs: {sorted(rows[0]['inputs']) if rows else []}")
        return (np.asarray([r["inputs"][column] for r in rows], dtype=object),
                np.asarray([r["label"] for r in rows], np.int8),
                np.asarray([r["id"] for r in rows], np.int64))

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        out = {"pending": 0, "resolved": 0}
        out.update({k: int(v) for k, v in rows})
        return out
