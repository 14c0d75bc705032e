"""The prediction log: every answered request, written in batches to SQLite by a thread.

Each record holds the request id, time, model name and version, signature, API, status code,
latency, the fallback reason (or null), and the inputs and outputs as JSON (bytes as
``{"b64": ...}``). Each worker process writes its own file ``predictions-<worker>.sqlite`` in
``log.dir`` (WAL journal, so readers never block the writer); it is rotated to
``predictions-<worker>-<UTC time>.sqlite`` when it passes ``log.rotate_bytes`` or
``log.rotate_s``.

What "acknowledged" means (:class:`mlsd_jax.serving.config.LogConfig`): with
``log.durable=true`` the server sends a response only after the transaction holding its record
has committed, so every response a client received has its record on disk when the server is
killed with ``kill -9`` (commits go to the WAL with ``write()``; ``synchronous=FULL`` also
fsyncs them against power loss). With ``durable=false`` (the default) a record is committed
within ``log.flush_ms`` after its response; a ``kill -9`` loses at most that window.

Export for analysis: ``python -m mlsd_jax.serving.predlog export LOG_DIR OUT.parquet``
(:func:`export_parquet`) reads every file, rotated or live, into one Parquet table.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import json
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mlsd_jax.serving.config import LogConfig
from mlsd_jax.serving.errors import ServingError

COLUMNS = ("ts", "request_id", "model", "version", "signature", "api", "code", "latency_ms",
           "fallback", "inputs", "outputs")
SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
  id INTEGER PRIMARY KEY,
  ts REAL NOT NULL,
  request_id TEXT NOT NULL,
  model TEXT NOT NULL,
  version INTEGER,
  signature TEXT,
  api TEXT,
  code INTEGER NOT NULL,
  latency_ms REAL,
  fallback TEXT,
  inputs TEXT,
  outputs TEXT
)"""


def jsonable(x: Any):
    """A JSON-able copy of a tensor or value (bytes as UTF-8 text, else ``{"b64": ...}``;
    non-finite floats as null)."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            return [jsonable(v) for v in x.tolist()] if x.ndim else jsonable(x.item())
        if x.dtype.kind == "f":
            return _floats(x.tolist())
        return x.tolist()
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(x).decode("ascii")}
    if isinstance(x, list):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _floats(v):
    if isinstance(v, list):
        return [_floats(x) for x in v]
    return v if np.isfinite(v) else None


def _dumps(tensors: Mapping[str, Any] | None) -> str | None:
    if tensors is None:
        return None
    return json.dumps({k: jsonable(v) for k, v in tensors.items()}, separators=(",", ":"))


class _Item:
    __slots__ = ("record", "loop", "future")

    def __init__(self, record, loop=None, future=None):
        self.record, self.loop, self.future = record, loop, future


class PredictionLog:
    """Appends records from any thread; one writer thread commits them in batches."""

    def __init__(self, cfg: LogConfig, worker: int | str = 0, on_record=None):
        self.cfg = cfg
        self.dir = Path(cfg.dir).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"predictions-{worker}.sqlite"
        self.worker = worker
        self._on_record = on_record or (lambda outcome, n: None)
        self._queue: collections.deque[_Item] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._opened = 0.0
        self._db: sqlite3.Connection | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"predlog-{worker}", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    # --------------------------------------------------------------------------- producers
    def _record(self, request_id: str, model: str, version: int | None, signature: str | None,
                api: str, code: int, latency_ms: float, fallback: str | None,
                inputs: Mapping[str, Any] | None, outputs: Mapping[str, Any] | None) -> tuple:
        return (time.time(), request_id, model, version, signature, api, code, latency_ms,
                fallback, inputs if self.cfg.inputs else None, outputs)

    def write(self, *args, **kwargs) -> None:
        """Queues a record (non-durable): committed within ``flush_ms``; dropped and counted
        when ``max_queue`` records are already waiting."""
        record = self._record(*args, **kwargs)
        with self._cond:
            if len(self._queue) >= self.cfg.max_queue:
                self._on_record("dropped", 1)
                return
            self._queue.append(_Item(record))
            # Wake the writer only to start a flush window or to end a full one: a wake-up per
            # record would hand it the GIL once per request.
            if len(self._queue) == 1 or len(self._queue) >= self.cfg.max_batch:
                self._cond.notify()

    async def write_durable(self, *args, **kwargs) -> None:
        """Queues a record and returns once the transaction holding it has committed."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        record = self._record(*args, **kwargs)
        with self._cond:
            if len(self._queue) >= self.cfg.max_queue:
                raise ServingError("UNAVAILABLE", "the prediction log is behind "
                                                  f"({len(self._queue)} records waiting); retry")
            self._queue.append(_Item(record, loop, future))
            self._cond.notify()
        await future

    # ------------------------------------------------------------------------------ writer
    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.cfg.synchronous}")
        db.execute(SCHEMA)
        self._db = db
        self._opened = time.time()

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as e:  # noqa: BLE001 - reported to the constructor
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        wait = self.cfg.flush_ms / 1000.0
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait(timeout=1.0)
                    if not self._queue:
                        self._maybe_rotate()
                if self._stopped and not self._queue:
                    break
                durable = any(i.future is not None for i in self._queue)
            if not durable and not self._stopped:
                # Non-durable records may wait up to flush_ms to share one commit.
                end = time.monotonic() + wait
                with self._cond:
                    while (len(self._queue) < self.cfg.max_batch and not self._stopped
                           and not any(i.future is not None for i in self._queue)):
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
            with self._cond:
                n = min(len(self._queue), self.cfg.max_batch)
                items = [self._queue.popleft() for _ in range(n)]
            self._commit(items)
            self._maybe_rotate()
        if self._db is not None:
            self._db.close()

    def _commit(self, items: list[_Item]) -> None:
        error = None
        try:
            rows = [r[:9] + (_dumps(r[9]), _dumps(r[10])) for r in (i.record for i in items)]
            self._db.execute("BEGIN")
            self._db.executemany(
                f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES "
                f"({', '.join('?' * len(COLUMNS))})", rows)
            self._db.execute("COMMIT")
            self._on_record("committed", len(items))
        except Exception as e:  # noqa: BLE001 - reported to the waiting requests
            error = ServingError("UNAVAILABLE", f"the prediction log could not commit: {e}")
            self._on_record("failed", len(items))
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        for item in items:
            if item.future is not None:
                try:
                    item.loop.call_soon_threadsafe(_finish, item.future, error)
                except RuntimeError:
                    pass

    def _maybe_rotate(self) -> None:
        size = sum(os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal"))
                   if os.path.exists(p))
        if size < self.cfg.rotate_bytes and time.time() - self._opened < self.cfg.rotate_s:
            return
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target, n = self.dir / f"predictions-{self.worker}-{stamp}.sqlite", 1
        while target.exists():
            target, n = self.dir / f"predictions-{self.worker}-{stamp}-{n}.sqlite", n + 1
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._open()

    def flush(self, timeout: float = 10.0) -> None:
        """Blocks until every record queued so far is committed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cond:
                if not self._queue:
                    break
                self._cond.notify()
            time.sleep(0.005)
        # The last batch may still be committing: a no-op transaction waits for the lock.
        probe = sqlite3.connect(self.path, timeout=timeout)
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("COMMIT")
        probe.close()

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout=30)


def _finish(future: asyncio.Future, error) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def log_files(log_dir: str | Path) -> list[Path]:
    return sorted(Path(log_dir).glob("predictions-*.sqlite"))


def read_records(log_dir: str | Path) -> list[dict]:
    """Every record of every file in ``log_dir`` (rotated and live), oldest file first."""
    out = []
    for path in log_files(log_dir):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            cur = db.execute(f"SELECT {', '.join(COLUMNS)} FROM predictions ORDER BY id")
            out += [dict(zip(COLUMNS, row), file=path.name) for row in cur]
        finally:
            db.close()
    return out


def export_parquet(log_dir: str | Path, out: str | Path) -> int:
    """Writes every record in ``log_dir`` to one Parquet file; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = read_records(log_dir)
    types = {"ts": pa.float64(), "request_id": pa.string(), "model": pa.string(),
             "version": pa.int64(), "signature": pa.string(), "api": pa.string(),
             "code": pa.int32(), "latency_ms": pa.float64(), "fallback": pa.string(),
             "inputs": pa.string(), "outputs": pa.string(), "file": pa.string()}
    table = pa.table({k: pa.array([r[k] for r in records], type=t) for k, t in types.items()})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return table.num_rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] != "export":
        print("usage: python -m mlsd_jax.serving.predlog export LOG_DIR OUT.parquet",
              file=sys.stderr)
        return 2
    n = export_parquet(argv[1], argv[2])
    print(f"wrote {n} records to {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
