"""The model store: TF Serving's ``BASE/NAME/<version>/`` layout, versions, labels, hot swap.

Each served model is a base path of numbered version folders, each a SavedModel with the
bundle (``assets.extra/mlsd_model.json`` + variables) written by
:func:`mlsd_jax.export.export_model`. A thread polls every base path (``poll_s``) and
reconciles what is loaded with what should be:

* Which versions: the version policy (``latest`` N, ``specific``, ``all``) over the folders
  present, plus every version a label names. ``latest`` skips a version that failed to load,
  so a broken new export leaves the previous version serving.
* Loading happens off the request path: the bundle is read, every batch bucket compiled and run
  once (warmup), and only then the version joins the served set, in one atomic swap of an
  immutable view. A version that fails to load is recorded (state ``END`` with its error,
  counted in ``mlsd_serving_model_load_failures``) and retried only when its folder changes.
* Versions that left the policy are retired after the swap and closed a grace period later
  (``deadline_ms`` + 1 s), so requests already holding them finish.
* Labels (``stable``, ``canary``) come from the config, overridden by ``<base>/labels.json``
  when present (polled: writing it is how a label is moved or rolled back, see
  :func:`set_labels`). A label moves to a version only once that version is loaded, so a
  request by label never fails during a move.
* Paths: version folder names must be decimal numbers and must resolve (symlinks followed)
  inside the model's base path; requests name models and versions only by name and number.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mlsd_jax.errors import ConfigError
from mlsd_jax.serving.config import ModelConfig, ServeConfig
from mlsd_jax.serving.errors import ServingError, not_found
from mlsd_jax.serving.metrics import event, metrics
from mlsd_jax.serving.microbatch import Batcher
from mlsd_jax.serving.runtime import (Executor, JaxExecutor, SavedModelExecutor, SignatureInfo,
                                      output_specs, padded_dims, specs_of)

LABELS_FILE = "labels.json"


def set_labels(base_path: str | Path, labels: Mapping[str, int]) -> Path:
    """Atomically writes ``<base_path>/labels.json`` (picked up by running servers' polls)."""
    base = Path(base_path)
    clean = {str(k): int(v) for k, v in labels.items()}
    tmp = base / f".{LABELS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(clean, indent=2))
    os.replace(tmp, base / LABELS_FILE)
    return base / LABELS_FILE


@dataclasses.dataclass
class ModelVersion:
    """One loaded version: its card, signatures and their executors and batchers."""

    model: str
    version: int
    path: Path
    card: Mapping[str, Any]
    signatures: Mapping[str, SignatureInfo]
    executors: Mapping[str, Executor]
    batchers: Mapping[str, Batcher]
    fallbacks: Mapping[str, Mapping[str, Any]]
    loaded_at: float

    def signature(self, name: str | None) -> SignatureInfo:
        name = name or "serving_default"
        if name not in self.signatures:
            raise ServingError("INVALID_ARGUMENT",
                               f"signature_name {name!r} not found in model {self.model} "
                               f"version {self.version}; it has {sorted(self.signatures)}")
        return self.signatures[name]

    def fallback(self, signature: str, sizes: Mapping[str, int],
                 inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The fallback outputs for a request (``None``: the fallback cannot answer it)."""
        values = self.fallbacks.get(signature)
        if values is None:
            return None
        out = {}
        for name, spec in self.signatures[signature].outputs.items():
            value = values.get(name, 0)
            dtype = np.dtype(spec.dtype) if not spec.is_string else object
            if isinstance(value, Mapping):   # per input value: {by_input, table, default}
                column = inputs.get(value.get("by_input"))
                if column is None:
                    return None
                table, default = value.get("table") or {}, value.get("default", 0)
                looked = [table.get(k if isinstance(k, str) else
                                    k.decode("utf-8", "replace") if isinstance(k, bytes)
                                    else str(k), default)
                          for k in column.reshape(-1).tolist()]
                arr = np.asarray(looked, dtype=dtype).reshape(column.shape)
                if spec.shape_for(sizes) not in (None, arr.shape):
                    return None
                out[name] = arr
                continue
            value = np.asarray(value)
            sizes_here = dict(sizes)
            for d in spec.dims:
                if isinstance(d, str) and d not in sizes_here and value.ndim:
                    sizes_here[d] = value.shape[-1]
            shape = spec.shape_for(sizes_here)
            if shape is None:
                return None
            try:
                out[name] = np.broadcast_to(value.astype(dtype), shape).copy()
            except (ValueError, TypeError):
                return None
        return out

    def close(self) -> None:
        for b in self.batchers.values():
            b.close()
        for e in self.executors.values():
            e.close()


@dataclasses.dataclass(frozen=True)
class View:
    """What a model serves right now (replaced whole, never mutated)."""

    versions: Mapping[int, ModelVersion]
    labels: Mapping[str, int]
    default: int | None


def _fallback_values(cfg: ModelConfig, card: Mapping[str, Any], outputs) -> dict | None:
    if not cfg.fallback.enabled:
        return None
    values: dict[str, Any] = {}
    data = card.get("data") or {}
    rate = data.get("positive_rate")
    if "prob" in outputs and isinstance(rate, (int, float)) and 0 < rate < 1:
        values["prob"] = float(rate)
        if "logit" in outputs:
            values["logit"] = math.log(rate / (1 - rate))
    values.update(data.get("serving_fallback") or {})
    values.update(cfg.fallback.values or {})
    return values


class ServedModel:
    """A model name: its config, loaded versions (a :class:`View`) and per-version status."""

    def __init__(self, cfg: ModelConfig, serve: ServeConfig):
        self.cfg, self.serve = cfg, serve
        self.name = cfg.name
        base = Path(cfg.base_path).expanduser()
        if not base.is_dir():
            raise ConfigError(f"models[{cfg.name}].base_path={cfg.base_path!r}: not a directory "
                              f"(expected the model's folder of numbered versions, as written "
                              f"by experiments.run into <run dir>/export)")
        self.base = base.resolve()
        self.view = View({}, {}, None)
        self.status: dict[int, tuple[str, str]] = {}   # version -> (state, error message)
        self._failed: dict[int, tuple] = {}            # version -> folder signature at failure
        self._retiring: list[tuple[float, ModelVersion]] = []
        self._labels_source: dict[str, int] = dict(cfg.labels)

    # ------------------------------------------------------------------------------ requests
    def resolve(self, version: int | None = None, label: str | None = None) -> ModelVersion:
        view = self.view
        if label is not None:
            if label not in view.labels:
                raise not_found(f"model {self.name}: no version labelled {label!r} "
                                f"(labels: {sorted(view.labels)})")
            version = view.labels[label]
        if version is None:
            if view.default is None:
                raise ServingError("UNAVAILABLE", f"model {self.name} has no version loaded yet")
            version = view.default
        if version not in view.versions:
            state = self.status.get(version, ("", ""))
            detail = f" ({state[0]}: {state[1]})" if state[1] else ""
            raise not_found(f"model {self.name} version {version} is not available"
                            f"{detail}; available: {sorted(view.versions)}")
        return view.versions[version]

    # ------------------------------------------------------------------------------ polling
    def scan(self) -> dict[int, Path]:
        """Numbered version folders that resolve inside the base path."""
        found = {}
        try:
            entries = list(os.scandir(self.base))
        except OSError as e:
            event("model_base_unreadable", 30, model=self.name, path=str(self.base), error=str(e))
            return found
        for entry in entries:
            if not (entry.name.isascii() and entry.name.isdigit()):
                continue
            path = Path(entry.path)
            real = path.resolve()
            if os.path.commonpath([real, self.base]) != str(self.base):
                self.fail(int(entry.name), f"{path} resolves to {real}, outside the base path "
                                            f"{self.base}", None)
                continue
            if real.is_dir():
                found[int(entry.name)] = real
        return found

    def _policy(self, present: Mapping[int, Path]) -> set[int]:
        cfg = self.cfg
        if cfg.version_policy == "all":
            return set(present)
        if cfg.version_policy == "specific":
            return {v for v in cfg.versions if v in present}
        usable = sorted((v for v in present if v not in self._failed), reverse=True)
        return set(usable[:cfg.num_latest])

    def _read_labels(self) -> dict[str, int]:
        path = self.base / LABELS_FILE
        if not path.exists():
            return dict(self.cfg.labels)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object {label: version}")
            labels = {str(k): int(v) for k, v in data.items()}
        except (ValueError, TypeError, OSError) as e:
            event("labels_file_invalid", 30, model=self.name, path=str(path), error=str(e))
            return self._labels_source
        return {**self.cfg.labels, **labels}

    def reconcile(self, load) -> None:
        """Loads what the policy and labels want, then swaps the view and retires the rest."""
        present = self.scan()
        for v in list(self._failed):
            if v in present and _folder_signature(present[v]) != self._failed[v]:
                del self._failed[v]          # the folder changed: try again
        labels = self._read_labels()
        if labels != self._labels_source:
            event("labels_changed", model=self.name, labels=labels)
        self._labels_source = labels
        policy = self._policy(present)
        wanted = policy | {v for v in labels.values() if v in present and v not in self._failed}
        loaded = dict(self.view.versions)
        for v in sorted(wanted - set(loaded)):
            if v in self._failed:
                continue
            version = load(self, v, present[v])
            if version is not None:
                loaded[v] = version
        effective = {}
        for label, v in labels.items():
            if v in loaded:
                effective[label] = v
            elif self.view.labels.get(label) in loaded:    # not loadable (yet): keep the old
                effective[label] = self.view.labels[label]
        serving = policy & set(loaded)
        # Nothing of the policy could be loaded: keep serving whatever serves now.
        keep_set = (serving | set(effective.values())) if serving else set(loaded)
        keep = {v: loaded[v] for v in sorted(keep_set)}
        default = None
        if self.cfg.default_label and self.cfg.default_label in effective:
            default = effective[self.cfg.default_label]
        elif serving:
            default = max(serving)
        elif keep:
            default = max(keep)
        old = self.view
        self.view = View(keep, effective, default)
        now = time.monotonic()
        for v, m in old.versions.items():
            if v not in keep:
                self.status[v] = ("END", "")
                self._retiring.append((now + self.serve.deadline_ms / 1000 + 1.0, m))
                event("version_unloaded", model=self.name, version=v)
        metrics().versions.labels(self.name).set(len(keep))
        self._close_retired(now)

    def _close_retired(self, now: float) -> None:
        due = [m for t, m in self._retiring if t <= now]
        self._retiring = [(t, m) for t, m in self._retiring if t > now]
        for m in due:
            m.close()

    def fail(self, version: int, message: str, path: Path | None) -> None:
        """Records a version that cannot be served (retried when its folder changes)."""
        if version in self._failed:     # already recorded (a retry first clears it)
            return
        self._failed[version] = _folder_signature(path) if path is not None else ()
        self.status[version] = ("END", message)
        metrics().load_failures.labels(self.name).inc()
        event("version_load_failed", 40, model=self.name, version=version, error=message)

    def close(self) -> None:
        for m in self.view.versions.values():
            m.close()
        for _, m in self._retiring:
            m.close()
        self.view = View({}, {}, None)
        self._retiring = []


def _folder_signature(path: Path | None) -> tuple:
    if path is None:
        return ()
    out = []
    for p in (path, path / "saved_model.pb", path / "assets.extra" / "mlsd_model.json",
              path / "assets.extra" / "mlsd_variables.msgpack"):
        try:
            st = p.stat()
            out.append((p.name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((p.name, None, None))
    return tuple(out)


class ModelStore:
    """Every served model, loaded at start and kept current by a polling thread."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.models = {m.name: ServedModel(m, cfg) for m in cfg.model_list()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise not_found(f"model {name!r} is not served here; models: {sorted(self.models)}")
        return model

    @property
    def ready(self) -> bool:
        return all(m.view.default is not None for m in self.models.values())

    def poll_once(self) -> None:
        with self._lock:
            for model in self.models.values():
                try:
                    model.reconcile(self._load)
                except Exception as e:  # noqa: BLE001 - a poll must never stop serving
                    event("poll_failed", 40, model=model.name, error=repr(e))

    def start(self) -> "ModelStore":
        self.poll_once()
        self._thread = threading.Thread(target=self._poll_loop, name="model-poll", daemon=True)
        self._thread.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            self.poll_once()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        with self._lock:
            for model in self.models.values():
                model.close()

    # -------------------------------------------------------------------------------- loading
    def _load(self, model: ServedModel, version: int, path: Path) -> ModelVersion | None:
        t = time.perf_counter()
        model.status[version] = ("LOADING", "")
        event("version_loading", model=model.name, version=version, path=str(path))
        try:
            loaded = load_version(model.cfg, self.cfg, version, path)
        except Exception as e:  # noqa: BLE001 - any failure leaves the served set unchanged
            model.fail(version, f"{type(e).__name__}: {e}", path)
            return None
        model.status[version] = ("AVAILABLE", "")
        metrics().loads.labels(model.name).inc()
        compiles = sum(getattr(e, "warmed", 0) for e in loaded.executors.values())
        metrics().compiles.labels(model.name, "load").inc(compiles)
        event("version_loaded", model=model.name, version=version,
              seconds=round(time.perf_counter() - t, 3), warmup_compiles=compiles,
              task=loaded.card.get("task"))
        return loaded


def signature_infos(bundle, model_cfg: ModelConfig, cfg: ServeConfig) -> dict[str, SignatureInfo]:
    out = {}
    for name, sig in bundle.signatures.items():
        inputs = specs_of(sig.inputs)
        floats = {k for k, s in inputs.items()
                  if not s.is_string and np.dtype(s.dtype).kind == "f"}
        if model_cfg.allow_nan is None:
            nan_inputs = floats if sig.encode_np is not None else set()
        else:
            nan_inputs = floats if model_cfg.allow_nan else set()
        padded = padded_dims(specs_of(sig.model_inputs))
        limits = {d: max(b) for d, b in cfg.batching.dim_buckets.items() if d in padded}
        out[name] = SignatureInfo(name=name, inputs=inputs, outputs=output_specs(bundle, name),
                                  meanings=dict(sig.outputs), nan_inputs=frozenset(nan_inputs),
                                  max_rows=cfg.max_rows, dim_limits=limits)
    return out


def load_version(model_cfg: ModelConfig, cfg: ServeConfig, version: int,
                 path: Path) -> ModelVersion:
    """Reads one version folder, builds its executors, compiles and warms them up."""
    from mlsd_jax.export import load_bundle

    bundle = load_bundle(path)
    infos = signature_infos(bundle, model_cfg, cfg)
    bcfg = cfg.batching
    executors: dict[str, Executor] = {}
    batchers: dict[str, Batcher] = {}
    m = metrics()
    label = model_cfg.name
    try:
        for name, info in infos.items():
            buckets = [b for b in bcfg.buckets if b < bcfg.max_batch_size]
            buckets.append(min(b for b in bcfg.buckets if b >= bcfg.max_batch_size))
            if not bcfg.enabled:
                buckets = list(bcfg.buckets)
            if cfg.execution == "savedmodel":
                ex: Executor = SavedModelExecutor(path, info, buckets, bcfg.dim_buckets)
            else:
                ex = JaxExecutor(bundle, info, buckets, bcfg.dim_buckets)
            ex.warmed = ex.warmup()
            ex.on_compile = lambda: m.compiles.labels(label, "request").inc()
            executors[name] = ex
            if bcfg.enabled and info.batched:
                batchers[name] = Batcher(
                    ex, max_batch_size=bcfg.max_batch_size, max_queued=bcfg.max_queued,
                    batch_timeout_ms=bcfg.batch_timeout_ms, name=f"{label}/{version}/{name}",
                    on_batch=lambda rows, n: (m.batch_size.labels(label).observe(rows),
                                              m.batch_requests.labels(label).observe(n)),
                    on_depth=lambda depth: m.queue_depth.labels(label).set(depth))
    except BaseException:
        for b in batchers.values():
            b.close()
        raise
    fallbacks = {}
    for name, info in infos.items():
        values = _fallback_values(model_cfg, bundle.card, info.outputs)
        if values is not None:
            fallbacks[name] = values
    return ModelVersion(model=model_cfg.name, version=version, path=path, card=bundle.card,
                        signatures=infos, executors=executors, batchers=batchers,
                        fallbacks=fallbacks, loaded_at=time.time())


__all__ = ["ModelStore", "ModelVersion", "ServedModel", "View", "load_version", "set_labels"]
