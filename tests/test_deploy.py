"""Deployment files: the Dockerfile's install and start commands and the Kubernetes manifest.

No Docker engine runs here, so the Dockerfile is read as data: its ``pip install`` names extras
that ``setup.py`` defines, the files it copies exist and pass ``.dockerignore``, and its
``ENTRYPOINT`` (with the image's environment) is run as written against an exported model until
the image's ``HEALTHCHECK`` command passes. The manifest's probes must be routes of the server.
"""
import ast
import fnmatch
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlsd_jax.serving.rest import RestApi

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- parsing
def dockerfile(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with comments dropped and ``\\`` continuations joined."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def instructions(keyword: str) -> list[str]:
    return [a for k, a in dockerfile() if k == keyword]


def image_env() -> dict[str, str]:
    env = {}
    for args in instructions("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def setup_extras() -> set[str]:
    """The keys of ``extras_require`` in setup.py (read, not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return {k.value for k in node.value.keys}
    raise AssertionError("setup.py has no extras_require")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes; a pattern matching a
    folder covers what is inside it."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pat[3:]) for p in prefixes)
        else:
            hit = any(re.fullmatch(regex, p) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def server_routes() -> set[str]:
    return {r.path for r in RestApi(types.SimpleNamespace(cfg=None)).routes()}


def manifest() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    return {d["kind"]: d for d in docs if d}


# ------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_installs_existing_extras_and_copies_existing_files():
    installs = [a for a in instructions("RUN") if "pip install" in a]
    extras = [set(m.split(",")) for a in installs for m in re.findall(r"\.\[([\w,-]+)\]", a)]
    assert extras and {"serve"} <= set().union(*extras), installs
    assert set().union(*extras) <= setup_extras(), (set().union(*extras), setup_extras())
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for args in instructions("COPY"):
        *sources, _ = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert not dockerignored(src, patterns), f"COPY {src}: excluded by .dockerignore"
    for needed in ("mlsd_jax/serving/server.py", "configs/serve.yaml", "experiments/serve.py"):
        assert not dockerignored(needed, patterns), needed
    for left_out in ("outputs/x/results.json", "tests/test_deploy.py", ".git/HEAD",
                     "mlsd_jax/__pycache__/x.pyc"):
        assert dockerignored(left_out, patterns), left_out


def test_dockerfile_runs_the_serve_command_on_the_exposed_ports():
    entry = json.loads(instructions("ENTRYPOINT")[0])
    assert entry[:2] == ["sh", "-c"] and "python -m experiments.serve" in entry[2]
    assert "model_name=" in entry[2] and "model_base_path=" in entry[2] and '"$@"' in entry[2]
    env = image_env()
    assert {"MODEL_NAME", "MODEL_BASE_PATH", "PREDLOG_DIR"} <= set(env)
    serve = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    exposed = {int(p) for a in instructions("EXPOSE") for p in a.split()}
    assert exposed == {serve["rest_port"], serve["grpc_port"]} == {8500, 8501}
    check = instructions("HEALTHCHECK")[0]
    path = re.search(r"http://127\.0\.0\.1:8501(/[\w/]+)", check).group(1)
    assert path in server_routes()


# ------------------------------------------------------------------------------- Kubernetes
def test_kubernetes_manifest_probes_ports_and_volumes_agree_with_the_server():
    docs = manifest()
    assert {"Deployment", "Service"} <= set(docs)
    dep, svc = docs["Deployment"], docs["Service"]
    spec = dep["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    routes = server_routes()
    probes = {k: container[k]["httpGet"] for k in ("livenessProbe", "readinessProbe",
                                                   "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    for name, probe in probes.items():
        assert probe["path"] in routes, (name, probe["path"])
        assert ports.get(probe["port"], probe["port"]) == 8501, name
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(
        resources["limits"])
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    model_dir = f"{env['MODEL_BASE_PATH']}/{env['MODEL_NAME']}"
    (models,) = [m for m in mounts.values() if m["mountPath"] == model_dir]
    assert models["readOnly"] and "persistentVolumeClaim" in volumes[models["name"]]
    assert any(m["mountPath"] == env["PREDLOG_DIR"] for m in mounts.values())
    assert set(mounts) <= set(volumes)
    uid = re.search(r"--uid (\d+)", " ".join(instructions("RUN"))).group(1)
    assert spec["template"]["spec"]["securityContext"]["runAsUser"] == int(uid)
    if "HorizontalPodAutoscaler" in docs:
        target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])


# ------------------------------------------------------------------------------- start command
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    """A real tabular export (SavedModel + bundle, fitted on UCI Adult) at initial weights,
    placed as the image expects it: ``$MODEL_BASE_PATH/$MODEL_NAME/1``."""
    import jax
    from flax.linen import meta

    from mlsd_jax import tasks
    from mlsd_jax.export import export_model
    from mlsd_jax.tasks.base import init_variables
    from tests.utils import compose_config

    task = tasks.build(compose_config(["+task=tabular"]))
    variables = meta.unbox(init_variables(task.model, task.forward, task.consts,
                                          task.inputs(task.example_batch), jax.random.key(0)))
    base = tmp_path_factory.mktemp("models")
    export_model(task, types.SimpleNamespace(variables=variables, consts=task.consts),
                 base / "tabular", version=1, check=False)
    rows = {k: np.asarray(v)[:3].tolist()
            for k, v in task.serving_examples["serving_default"].items()}
    return base, [dict(zip(rows, values)) for values in zip(*rows.values())]


@pytest.mark.slow
def test_dockerfile_entrypoint_serves_until_the_healthcheck_passes(exported_model, tmp_path):
    """The image's start command and environment, with the model where the image mounts it:
    the HEALTHCHECK command passes, readiness answers, a TF Serving predict works, and SIGTERM
    stops the server cleanly."""
    import httpx

    base, instances = exported_model
    rest, grpc = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(image_env())
    env.update(MODEL_NAME="tabular", MODEL_BASE_PATH=str(base),
               PREDLOG_DIR=str(tmp_path / "predlog"), MLSD_JAX_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    command = json.loads(instructions("ENTRYPOINT")[0])
    command += json.loads(instructions("CMD")[0]) + [f"rest_port={rest}", f"grpc_port={grpc}",
                                                     "host=127.0.0.1"]
    home = tmp_path / "home"
    home.mkdir()
    proc = subprocess.Popen(command, cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    check = shlex.split(instructions("HEALTHCHECK")[0].split("CMD", 1)[1])
    check = [a.replace("127.0.0.1:8501", f"127.0.0.1:{rest}") for a in check]
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"server exited {proc.returncode}: {proc.stderr.read()[-3000:]}"
            if subprocess.run(check, env=env, capture_output=True).returncode == 0:
                break
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(2)
        url = f"http://127.0.0.1:{rest}"
        while httpx.get(f"{url}/v2/health/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "never ready"
            time.sleep(1)
        reply = httpx.post(f"{url}/v1/models/tabular:predict", json={"instances": instances},
                           timeout=30)
        assert reply.status_code == 200, reply.text
        predictions = reply.json()["predictions"]
        assert len(predictions) == 3 and all(0 < p["prob"] < 1 for p in predictions)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert (tmp_path / "predlog").is_dir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
