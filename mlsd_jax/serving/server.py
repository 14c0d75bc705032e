"""The model server: TF Serving REST + gRPC and KServe V2 over one model store.

Command line (Hydra; ``configs/serve.yaml`` lists every setting)::

    python -m experiments.serve model_name=NAME model_base_path=DIR [overrides]
    python -m experiments.serve model_name=tabular model_base_path=outputs/tabular/RUN/export \\
        rest_port=8501 grpc_port=8500 workers=2 batching.max_batch_size=64 log.dir=predlog
    python -m experiments.serve --config-name serve 'models=[{name: a, base_path: /m/a},
        {name: b, base_path: /m/b, labels: {stable: 3, canary: 4}}]'

``model_base_path`` is the model's folder of numbered versions, as in TF Serving
(``BASE/NAME/<version>/`` with ``BASE/NAME`` given; ``experiments.run`` writes
``<run dir>/export/<version>/``). Ports: REST ``rest_port`` (8501), gRPC ``grpc_port`` (8500);
``0`` picks a free port, ``-1`` disables gRPC. When every model has a version loaded and warmed
up and both ports listen, the server prints one JSON line to stdout::

    {"event": "ready", "rest_port": 8501, "grpc_port": 8500, "workers": 1, "pid": 123, ...}

and writes the same object to ``ready_file`` when set. ``SIGTERM``/``SIGINT`` drain and stop.
With ``workers=N > 1`` N processes share both ports (``SO_REUSEPORT``); each loads the models
itself (the server holds no state but its prediction log, one SQLite file per worker).

Python::

    from mlsd_jax.serving import ModelConfig, ServeConfig, build_app, serve, start_server
    cfg = ServeConfig(models=[ModelConfig(name="tabular", base_path="runs/t/export")],
                      rest_port=0, grpc_port=0)
    with start_server(cfg) as server:          # in-process, background thread, ports chosen
        server.rest_url, server.grpc_target      # "http://127.0.0.1:PORT", "127.0.0.1:PORT"
    serve(cfg)                                   # blocks (the CLI), workers > 1 supported
    app, state = build_app(cfg)                  # the ASGI app (models loaded) for a test client

Endpoints (REST, port 8501):

* TF Serving: ``GET /v1/models/NAME[/versions/N|/labels/L]`` (status), ``.../metadata``,
  ``POST .../NAME[/versions/N|/labels/L]:predict`` (``instances`` or ``inputs``,
  ``{"b64": ...}`` for bytes), ``:classify`` and ``:regress`` for binary-probability models;
  errors ``{"error": "..."}`` with TF Serving's status codes.
* KServe V2: ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``,
  ``GET /v2/models/NAME[/versions/V]`` (metadata), ``.../ready``,
  ``POST /v2/models/NAME[/versions/V]/infer``.
* ``GET /metrics`` (Prometheus), ``GET /healthz``.

gRPC (port 8500): ``tensorflow.serving.PredictionService`` (Predict, GetModelMetadata) and
``tensorflow.serving.ModelService`` (GetModelStatus), on TF Serving's published protos
(:mod:`mlsd_jax.serving.tfs_protos`); other RPCs answer UNIMPLEMENTED.

Clients should set ``TCP_NODELAY`` (most HTTP/gRPC clients do; ``httpx`` needs
``socket_options``): without it a request body written after its headers waits for a delayed
ACK (~40 ms).

Responses carry ``X-Request-Id`` (the client's, or a new one) and, when the model failed or
missed its deadline and the configured fallback answered, ``X-Mlsd-Fallback: <reason>`` plus a
``"fallback"`` field in the body (``parameters.fallback`` in V2, trailing metadata
``x-mlsd-fallback`` in gRPC). Request deadlines: ``X-Request-Deadline-Ms`` or the gRPC
deadline, else ``deadline_ms``, counted from the request's arrival. Load shedding: beyond
``max_inflight`` predict requests held by a process, more are refused at once (429
``{"error": ...}`` / ``RESOURCE_EXHAUSTED``), as are requests finding ``batching.max_queued``
waiting; probes and ``/metrics`` never are.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mlsd_jax.serving.cache import ResponseCache
from mlsd_jax.serving.config import ServeConfig, serve_config
from mlsd_jax.serving.metrics import configure_logging, event, metrics, set_textfiles
from mlsd_jax.serving.predlog import PredictionLog
from mlsd_jax.serving.rest import RestApi
from mlsd_jax.serving.service import Service
from mlsd_jax.serving.store import ModelStore


@dataclasses.dataclass
class ServerState:
    """What one server process holds: the config, model store, service and prediction log."""

    cfg: ServeConfig
    store: ModelStore
    service: Service
    predlog: PredictionLog | None

    def close(self) -> None:
        self.store.close()
        if self.predlog is not None:
            self.predlog.close()


def build_state(cfg: ServeConfig, worker: int | str = 0) -> ServerState:
    """Loads every model (first versions compiled and warmed up) and opens the log."""
    cfg = serve_config(cfg)
    use_compilation_cache(cfg.compilation_cache)
    m = metrics()
    set_textfiles(cfg.metrics_textfiles)
    predlog = (PredictionLog(cfg.log, worker, on_record=lambda outcome, n:
                             m.log_records.labels(outcome).inc(n)) if cfg.log.enabled else None)
    try:
        store = ModelStore(cfg).start()
    except BaseException:
        if predlog is not None:
            predlog.close()
        raise
    cache = ResponseCache(cfg.cache.ttl_s, cfg.cache.max_bytes) if cfg.cache.enabled else None
    review = None
    if cfg.review_queue:
        from mlsd_jax.serving.review import ReviewQueue

        review = ReviewQueue(cfg.review_queue, synchronous=cfg.log.synchronous)
    return ServerState(cfg, store, Service(cfg, store, predlog, cache, review), predlog)


def use_compilation_cache(folder: str | None) -> None:
    """Turns on XLA's persistent compilation cache (every compile, however short)."""
    if folder is None:
        return
    import jax

    if not folder:
        from mlsd_jax.data.fetch import cache_dir

        folder = str(cache_dir() / "xla")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build_app(cfg: ServeConfig, state: ServerState | None = None):
    """``(starlette_app, state)``: the REST app over loaded models (close ``state`` after)."""
    state = state or build_state(cfg)
    return RestApi(state.service).app(), state


def _socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with ``SO_REUSEPORT``, so several processes can share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only for
    # sockets whose proto says TCP (with proto 0, every response waits on delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)


async def _run(state: ServerState, rest_sock: socket.socket, grpc_port: int,
               started: threading.Event | None, info: dict, stop: asyncio.Event) -> None:
    """Runs uvicorn (REST) and grpc.aio (gRPC) on this event loop until ``stop`` is set."""
    import uvicorn

    cfg = state.cfg
    app = RestApi(state.service).app()
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_keep_alive=30, backlog=2048)
    server = uvicorn.Server(config)
    grpc_server = None
    if grpc_port >= 0:
        import grpc

        from mlsd_jax.serving.grpc_service import handlers

        grpc_server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", cfg.max_body_bytes),
            ("grpc.max_send_message_length", 64 << 20)])
        grpc_server.add_generic_rpc_handlers(handlers(state.service))
        bound = grpc_server.add_insecure_port(f"{cfg.host}:{grpc_port}"
                                              if ":" not in cfg.host else
                                              f"[{cfg.host}]:{grpc_port}")
        if bound == 0:
            raise OSError(f"gRPC could not bind {cfg.host}:{grpc_port}")
        info["grpc_port"] = bound
        await grpc_server.start()
    rest_sock.listen(2048)
    task = asyncio.create_task(server.serve(sockets=[rest_sock]))
    while not server.started:
        if task.done():
            await task
            raise OSError("the REST server stopped while starting")
        await asyncio.sleep(0.01)
    info["rest_port"] = rest_sock.getsockname()[1]
    if started is not None:
        started.set()
    stopper = asyncio.create_task(stop.wait())
    # uvicorn handles SIGINT/SIGTERM itself in the main thread: either side ends both.
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    server.should_exit = True
    if grpc_server is not None:
        await grpc_server.stop(grace=2)
    await task


def _ready_line(cfg: ServeConfig, info: dict, state: ServerState | None, workers: int) -> dict:
    ready = {"event": "ready", "rest_port": info["rest_port"],
             "grpc_port": info.get("grpc_port", -1), "host": cfg.host, "workers": workers,
             "pid": os.getpid(), "execution": cfg.execution,
             "log_dir": str(Path(cfg.log.dir).absolute()) if cfg.log.enabled else None}
    if state is not None:
        ready["models"] = {n: sorted(m.view.versions) for n, m in state.store.models.items()}
    return ready


def _announce(cfg: ServeConfig, ready: dict) -> None:
    line = json.dumps(ready)
    if cfg.ready_file:   # first, so the file exists once the line is seen
        path = Path(cfg.ready_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(line + "\n")
        os.replace(tmp, path)
    print(line, flush=True)


def _serve_one(cfg: ServeConfig, worker: int | str, rest_port: int, grpc_port: int,
               on_ready) -> None:
    """One server process's life: load, listen, announce, run until SIGTERM/SIGINT."""
    state = build_state(cfg, worker)
    info: dict = {}
    try:
        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            started = threading.Event()
            sock = _socket(cfg.host, rest_port)
            runner = asyncio.create_task(_run(state, sock, grpc_port, started, info, stop))
            while not started.is_set():
                if runner.done():
                    await runner
                await asyncio.sleep(0.01)
            on_ready(_ready_line(cfg, info, state, cfg.workers))
            await runner

        asyncio.run(main())
    finally:
        state.close()
        event("stopped", worker=worker)


def tune_interpreter() -> None:
    """A server process hands the GIL between its event loop (parsing, validation) and the
    batch threads (encoding, the model) thousands of times a second: Python's default 5 ms
    switch interval would add up to 5 ms to each hand-off, so it is cut to 0.5 ms."""
    sys.setswitchinterval(0.0005)


def serve(cfg: ServeConfig | Any) -> None:
    """Runs the server until SIGTERM/SIGINT (the command line's entry point)."""
    cfg = serve_config(cfg)
    configure_logging()
    tune_interpreter()
    if cfg.workers == 1:
        _serve_one(cfg, 0, cfg.rest_port, cfg.grpc_port, lambda ready: _announce(cfg, ready))
        return
    _serve_workers(cfg)


# ------------------------------------------------------------------------- worker processes
def _worker_main(cfg_dict: dict, worker: int, rest_port: int, grpc_port: int, queue) -> None:
    from mlsd_jax.serving.config import serve_config as make

    cfg = make(cfg_dict)
    configure_logging()
    tune_interpreter()
    try:
        _serve_one(cfg, worker, rest_port, grpc_port, lambda ready: queue.put(("ready", worker,
                                                                               ready)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("failed", worker, f"{type(e).__name__}: {e}"))
        raise


def _serve_workers(cfg: ServeConfig) -> None:
    """``workers`` processes sharing the REST and gRPC ports through ``SO_REUSEPORT``."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlsd-serving-prom-")
    # Reserve the ports (bound, not listening: the kernel sends connections only to the
    # workers' listening sockets).
    rest_hold = _socket(cfg.host, cfg.rest_port)
    rest_port = rest_hold.getsockname()[1]
    grpc_hold, grpc_port = None, cfg.grpc_port
    if cfg.grpc_port >= 0:
        grpc_hold = _socket(cfg.host, cfg.grpc_port)
        grpc_port = grpc_hold.getsockname()[1]
    cfg_dict = dataclasses.asdict(cfg)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs: dict[int, Any] = {}

    def start(i: int):
        p = ctx.Process(target=_worker_main, args=(cfg_dict, i, rest_port, grpc_port, queue),
                        name=f"mlsd-serving-worker-{i}", daemon=False)
        p.start()
        procs[i] = p

    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(cfg.workers):
        start(i)
    ready: dict[int, dict] = {}
    announced = False
    try:
        while not stopping.is_set():
            try:
                kind, worker, payload = queue.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty: check the workers
                kind = None
            if kind == "ready":
                ready[worker] = payload
                if not announced and len(ready) == cfg.workers:
                    line = dict(payload, workers=cfg.workers, pid=os.getpid(),
                                worker_pids=[procs[i].pid for i in sorted(procs)])
                    _announce(cfg, line)
                    announced = True
            elif kind == "failed" and not announced:
                raise RuntimeError(f"worker {worker} failed to start: {payload}")
            for i, p in list(procs.items()):
                if not p.is_alive() and not stopping.is_set():
                    if not announced:
                        raise RuntimeError(f"worker {i} exited with code {p.exitcode} "
                                           f"while starting")
                    event("worker_restart", 30, worker=i, exitcode=p.exitcode)
                    start(i)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(timeout=30)
        rest_hold.close()
        if grpc_hold is not None:
            grpc_hold.close()


# ------------------------------------------------------------------------ in-process server
class RunningServer:
    """A server on a background thread of this process (tests, notebooks)."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = serve_config(cfg)
        self.state: ServerState | None = None
        self.info: dict = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def rest_url(self) -> str:
        return f"http://{_connect_host(self.cfg.host)}:{self.info['rest_port']}"

    @property
    def grpc_target(self) -> str:
        return f"{_connect_host(self.cfg.host)}:{self.info['grpc_port']}"

    def start(self, timeout: float = 600) -> "RunningServer":
        self.state = build_state(self.cfg)
        started = threading.Event()

        def run():
            async def main():
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                sock = _socket(self.cfg.host, self.cfg.rest_port)
                await _run(self.state, sock, self.cfg.grpc_port, started, self.info, self._stop)

            try:
                asyncio.run(main())
            except BaseException as e:  # noqa: BLE001 - reported to start()
                self._error = e
                started.set()

        self._thread = threading.Thread(target=run, name="mlsd-serving", daemon=True)
        self._thread.start()
        end = time.monotonic() + timeout
        while not started.wait(0.05):
            if time.monotonic() > end:
                raise TimeoutError("the server did not start")
        if self._error is not None:
            self.state.close()
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.state is not None:
            self.state.close()
            self.state = None

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(cfg: ServeConfig | Any) -> RunningServer:
    """Starts a server on a background thread; use as a context manager (stops on exit)."""
    return RunningServer(cfg).start()


def main_from_config(node) -> int:
    """The command line's body: a composed config -> serve; user errors print one line."""
    from omegaconf.errors import OmegaConfBaseException

    from mlsd_jax.errors import UserError

    try:
        serve(serve_config(node))
    except (UserError, OmegaConfBaseException, OSError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {str(e).strip()}", file=sys.stderr, flush=True)
        return 2
    return 0
