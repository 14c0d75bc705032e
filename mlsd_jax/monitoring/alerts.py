"""Alert rules over monitoring windows, and where the alerts go.

A :class:`AlertRule` compares one number of a window record (:func:`mlsd_jax.monitoring.windows.monitor`)
with a threshold: ``metric`` is a dotted path into the record (``"drift.n_drifted"``,
``"latency.p99"``, ``"quality.estimated.roc_auc"``, ``"features.AGEP.p_adjusted"``,
``"error_rate"``; booleans count as 0 / 1), ``op`` one of ``>``, ``<``, ``>=``, ``<=``.  A window
*breaches* the rule when its value compares true; a null or absent value does not breach.

:class:`AlertManager` keeps per rule the run of consecutive breaching windows and the last
firing.  A rule fires on a window when the run has reached ``windows`` and the rule is not
cooling down: after a firing the next ``cooldown_windows`` windows are silent, or the windows
ending less than ``cooldown_s`` seconds (of window time: the records' ``end``) after the one
that fired.  While the breach goes on it fires
again each time the cool-down has passed.  ``state_dict()`` / ``load_state_dict()`` carry the
runs, last firings, counts and the end of the last window evaluated, so a restarted monitor
neither re-fires during a cool-down nor re-evaluates a window it has already seen (a record
whose ``end`` is not after the last evaluated one is skipped).

Sinks receive every alert (``emit``) and, where they define it, every evaluated record
(``observe``).  A sink that raises never breaks :meth:`AlertManager.evaluate`: the error is
recorded in ``AlertManager.sink_errors`` and in the alert's ``delivery``.

* :class:`LogSink`: one JSON object per line appended to a file, flushed and fsynced.
* :class:`WebhookSink`: HTTP POST of the alert as JSON (``urllib``), retried with exponential
  backoff after network errors, timeouts and 5xx / 408 / 429 answers (not after other 4xx);
  failures are recorded in ``failures`` and never raised.
* :class:`MetricsSink`: Prometheus text: the counter ``mlsd_monitor_alerts_total{rule, severity}``
  and the gauges ``mlsd_monitor_metric{name}`` of the latest window's numbers
  (:meth:`MetricsSink.render`), or the same as a ``prometheus_client`` collector
  (:meth:`MetricsSink.collector`) to register beside the server's metrics.
"""
from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mlsd_jax.monitoring.windows import jsonsafe, lookup

__all__ = ["AlertRule", "Alert", "AlertManager", "LogSink", "WebhookSink", "MetricsSink",
           "SEVERITIES", "OPS"]

OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
SEVERITIES = ("info", "warning", "critical")
_FIELDS = ("name", "metric", "op", "threshold", "windows", "cooldown_s", "cooldown_windows",
           "severity", "description")


def _number(v) -> float | None:
    """The comparable number of a record value (bool as 0 / 1); None when not a finite number."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


@dataclasses.dataclass(frozen=True)
class AlertRule:
    """Fires when ``metric`` ``op`` ``threshold`` holds on ``windows`` consecutive windows
    (module docstring); ``cooldown_s`` / ``cooldown_windows`` (at most one) silence it after a
    firing."""

    name: str
    metric: str
    op: str
    threshold: float
    windows: int = 1
    cooldown_s: float | None = None
    cooldown_windows: int | None = None
    severity: str = "warning"
    description: str = ""

    def __post_init__(self):
        _validate(dataclasses.asdict(self), self.name if isinstance(self.name, str) else None)

    def breached(self, record: Mapping) -> tuple[bool, float | None]:
        """``(breached, value)`` of one window record."""
        v = _number(lookup(record, self.metric))
        return (v is not None and OPS[self.op](v, self.threshold)), v

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> "AlertRule":
        """A rule from configuration (e.g. a YAML / JSON mapping); errors name the field."""
        if not isinstance(d, Mapping):
            raise TypeError(f"an alert rule must be a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise ValueError(f"alert rule {d.get('name', '?')!r}: unknown field(s) {unknown}; "
                             f"expected some of {list(_FIELDS)}")
        for f in ("name", "metric", "op", "threshold"):
            if f not in d:
                raise ValueError(f"alert rule {d.get('name', '?')!r}: field {f!r} is required")
        return cls(**dict(d))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _validate(d: dict, name: str | None) -> None:
    who = f"alert rule {name!r}" if name else "alert rule"
    if not isinstance(d["name"], str) or not d["name"]:
        raise ValueError(f"{who}: field 'name' must be a non-empty string, got {d['name']!r}")
    if not isinstance(d["metric"], str) or not d["metric"] or any(not p for p in d["metric"].split(".")):
        raise ValueError(f"{who}: field 'metric' must be a dotted path such as 'latency.p99', "
                         f"got {d['metric']!r}")
    if d["op"] not in OPS:
        raise ValueError(f"{who}: field 'op' must be one of {list(OPS)}, got {d['op']!r}")
    t = d["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ValueError(f"{who}: field 'threshold' must be a finite number, got {t!r}")
    w = d["windows"]
    if isinstance(w, bool) or not isinstance(w, int) or w < 1:
        raise ValueError(f"{who}: field 'windows' must be an integer >= 1, got {w!r}")
    cs, cw = d["cooldown_s"], d["cooldown_windows"]
    if cs is not None and (isinstance(cs, bool) or not isinstance(cs, (int, float)) or not cs >= 0):
        raise ValueError(f"{who}: field 'cooldown_s' must be a number >= 0, got {cs!r}")
    if cw is not None and (isinstance(cw, bool) or not isinstance(cw, int) or cw < 0):
        raise ValueError(f"{who}: field 'cooldown_windows' must be an integer >= 0, got {cw!r}")
    if cs is not None and cw is not None:
        raise ValueError(f"{who}: give at most one of fields 'cooldown_s' and 'cooldown_windows'")
    if d["severity"] not in SEVERITIES:
        raise ValueError(f"{who}: field 'severity' must be one of {list(SEVERITIES)}, got {d['severity']!r}")
    if not isinstance(d["description"], str):
        raise ValueError(f"{who}: field 'description' must be a string, got {d['description']!r}")


@dataclasses.dataclass
class Alert:
    """One firing of a rule on a window."""

    rule: str
    metric: str
    op: str
    threshold: float
    value: float
    severity: str
    consecutive: int
    window: dict  # index, start, end of the window record
    fired_at: float  # wall-clock time of the firing
    message: str
    delivery: dict = dataclasses.field(default_factory=dict)  # sink name -> "ok" or the error

    def to_dict(self) -> dict:
        return jsonsafe(dataclasses.asdict(self))


class AlertManager:
    """Evaluates rules on each window record and sends the alerts to the sinks (module docstring)."""

    def __init__(self, rules: Iterable[AlertRule | Mapping], sinks: Sequence[Any] = ()):
        self.rules = [r if isinstance(r, AlertRule) else AlertRule.from_mapping(r) for r in rules]
        names = [r.name for r in self.rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"alert rule names must be unique; repeated: {dup}")
        self.sinks = list(sinks)
        self.sink_errors: list[dict] = []
        self._state = {r.name: self._fresh() for r in self.rules}
        self.n_evaluated = 0
        self.last_end: float | None = None

    @staticmethod
    def _fresh() -> dict:
        return {"streak": 0, "fired": 0, "last_fired_window": None, "last_fired_end": None}

    def _cooling(self, rule: AlertRule, st: dict, window_no: int, end: float) -> bool:
        if st["last_fired_window"] is None:
            return False
        if rule.cooldown_windows is not None:
            return window_no - st["last_fired_window"] <= rule.cooldown_windows
        if rule.cooldown_s is not None:
            return end - st["last_fired_end"] < rule.cooldown_s
        return False

    def evaluate(self, record: Mapping) -> list[Alert]:
        """The alerts one window record fires (after updating every rule's state)."""
        end = record.get("end")
        end = float(end) if _number(end) is not None else None
        if end is not None and self.last_end is not None and end <= self.last_end:
            return []  # already evaluated (a restarted monitor re-reading its log)
        window_no = self.n_evaluated
        self.n_evaluated += 1
        if end is not None:
            self.last_end = end
        t_end = end if end is not None else time.time()
        for sink in self.sinks:
            if hasattr(sink, "observe"):
                self._deliver(sink, "observe", record, None)
        fired = []
        for rule in self.rules:
            st = self._state[rule.name]
            hit, value = rule.breached(record)
            st["streak"] = st["streak"] + 1 if hit else 0
            if not hit or st["streak"] < rule.windows or self._cooling(rule, st, window_no, t_end):
                continue
            st["fired"] += 1
            st["last_fired_window"], st["last_fired_end"] = window_no, t_end
            win = {k: record.get(k) for k in ("index", "start", "end")}
            alert = Alert(rule=rule.name, metric=rule.metric, op=rule.op, threshold=rule.threshold,
                          value=value, severity=rule.severity, consecutive=st["streak"],
                          window=win, fired_at=time.time(),
                          message=(f"{rule.name}: {rule.metric} = {value:.6g} {rule.op} "
                                   f"{rule.threshold:g} for {st['streak']} window(s)"))
            fired.append(alert)
        for alert in fired:
            for sink in self.sinks:
                self._deliver(sink, "emit", alert, alert)
        return fired

    def _deliver(self, sink, method: str, payload, alert: Alert | None) -> None:
        name = getattr(sink, "name", type(sink).__name__)
        try:
            getattr(sink, method)(payload)
            if alert is not None:
                alert.delivery.setdefault(name, "ok")
        except Exception as e:  # noqa: BLE001 - a sink never breaks evaluation
            msg = f"{type(e).__name__}: {e}"
            self.sink_errors.append({"sink": name, "method": method, "error": msg, "at": time.time()})
            if alert is not None:
                alert.delivery[name] = msg

    def fired_counts(self) -> dict:
        """Firings per rule since the state began (restored state included)."""
        return {n: st["fired"] for n, st in self._state.items()}

    def state_dict(self) -> dict:
        return {"version": 1, "n_evaluated": self.n_evaluated, "last_end": self.last_end,
                "rules": {n: dict(st) for n, st in self._state.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restores :meth:`state_dict`; rules it does not know start fresh, unknown ones are dropped."""
        if state.get("version") != 1:
            raise ValueError(f"alert state version {state.get('version')!r} is not supported; expected 1")
        self.n_evaluated = int(state["n_evaluated"])
        self.last_end = state.get("last_end")
        saved = state.get("rules", {})
        for name in self._state:
            if name in saved:
                st = self._fresh()
                st.update({k: saved[name][k] for k in st if k in saved[name]})
                self._state[name] = st
        for sink in self.sinks:
            if isinstance(sink, MetricsSink):
                sink.restore_counts(self.rules, self.fired_counts())


# ----------------------------------------------------------------------------- sinks
class LogSink:
    """Appends each alert as one JSON line to ``path`` (flushed and fsynced)."""

    def __init__(self, path: str | os.PathLike, name: str = "log"):
        self.path = Path(path)
        self.name = name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def emit(self, alert: Alert) -> None:
        line = json.dumps(alert.to_dict(), allow_nan=False, sort_keys=True) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


class WebhookSink:
    """POSTs each alert as JSON to ``url``; up to ``retries`` more tries after a retryable
    failure (module docstring), waiting ``backoff_s * 2**k`` before retry ``k + 1``.  Never
    raises: failures go to ``failures``."""

    def __init__(self, url: str, timeout: float = 5.0, *, retries: int = 2, backoff_s: float = 0.5,
                 headers: Mapping[str, str] | None = None, name: str = "webhook"):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"WebhookSink url must start with http:// or https://, got {url!r}")
        if retries < 0:
            raise ValueError(f"WebhookSink retries must be >= 0, got {retries}")
        self.url, self.timeout, self.retries, self.backoff_s = url, timeout, retries, backoff_s
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.name = name
        self.failures: list[dict] = []
        self.sent = 0

    def emit(self, alert: Alert) -> None:
        body = json.dumps(alert.to_dict(), allow_nan=False).encode()
        errors = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                self.sent += 1
                alert.delivery[self.name] = "ok"
                return
            except urllib.error.HTTPError as e:
                errors.append(f"HTTPError: {e.code} {e.reason}")
                if e.code < 500 and e.code not in (408, 429):
                    break  # the receiver refused this request: repeating it would not help
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
        self.failures.append({"rule": alert.rule, "window": alert.window, "attempts": len(errors),
                              "errors": errors, "at": time.time()})
        alert.delivery[self.name] = f"failed after {len(errors)} attempt(s): {errors[-1]}"


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _leaves(x, prefix: str = ""):
    """``(dotted path, number)`` of every finite number / bool in a record, lists excluded."""
    if isinstance(x, Mapping):
        for k, v in x.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        v = _number(x)
        if v is not None:
            yield prefix, v


class MetricsSink:
    """Prometheus exposition of alerts and of the latest window record.

    ``include``: dotted-path prefixes of the record numbers exported as gauges (default
    :attr:`DEFAULT_INCLUDE`: sizes, throughput, latency, rates, the drift summary, prediction
    shift, PCA and quality; add ``"features"`` or ``"features.AGEP"`` for per-feature statistics,
    one series each; ``None``: every number of the record).
    """

    COUNTER = "mlsd_monitor_alerts_total"
    GAUGE = "mlsd_monitor_metric"
    DEFAULT_INCLUDE = ("n_rows", "n_requests", "n_failed", "throughput", "latency", "error_rate",
                       "fallback_rate", "drift", "prediction", "pca", "quality")

    def __init__(self, include: Sequence[str] | None = DEFAULT_INCLUDE, name: str = "metrics"):
        self.include = list(include) if include is not None else None
        self.name = name
        self.counts: dict[tuple, int] = {}
        self.latest: dict[str, float] = {}
        self._lock = threading.Lock()

    def emit(self, alert: Alert) -> None:
        with self._lock:
            key = (alert.rule, alert.severity)
            self.counts[key] = self.counts.get(key, 0) + 1

    def observe(self, record: Mapping) -> None:
        vals = {}
        for path, v in _leaves(record):
            if self.include is None or any(path == p or path.startswith(p + ".") for p in self.include):
                vals[path] = v
        with self._lock:
            self.latest = vals

    def restore_counts(self, rules: Sequence[AlertRule], fired: Mapping[str, int]) -> None:
        """Counters from a restored :class:`AlertManager` state (so they do not restart at 0)."""
        sev = {r.name: r.severity for r in rules}
        with self._lock:
            self.counts = {(n, sev[n]): int(c) for n, c in fired.items() if n in sev}

    def render(self) -> str:
        """The Prometheus text-format lines (``# HELP`` / ``# TYPE`` included)."""
        with self._lock:
            counts, latest = dict(self.counts), dict(self.latest)
        lines = [f"# HELP {self.COUNTER} Monitoring alerts fired, by rule",
                 f"# TYPE {self.COUNTER} counter"]
        for (rule, sev), c in sorted(counts.items()):
            lines.append(f'{self.COUNTER}{{rule="{_escape(rule)}",severity="{_escape(sev)}"}} {c}')
        lines += [f"# HELP {self.GAUGE} Latest monitoring window's metrics, by dotted name",
                  f"# TYPE {self.GAUGE} gauge"]
        for name, v in sorted(latest.items()):
            lines.append(f'{self.GAUGE}{{name="{_escape(name)}"}} {v!r}')
        return "\n".join(lines) + "\n"

    def collector(self):
        """A ``prometheus_client`` collector yielding the same families; register it with
        ``prometheus_client.REGISTRY.register(sink.collector())`` in the serving process."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sink = self

        class _Collector:
            def collect(self):
                with sink._lock:
                    counts, latest = dict(sink.counts), dict(sink.latest)
                c = CounterMetricFamily("mlsd_monitor_alerts", "Monitoring alerts fired, by rule",
                                        labels=["rule", "severity"])
                for (rule, sev), n in sorted(counts.items()):
                    c.add_metric([rule, sev], n)
                yield c
                g = GaugeMetricFamily(sink.GAUGE, "Latest monitoring window's metrics, by dotted name",
                                      labels=["name"])
                for name, v in sorted(latest.items()):
                    g.add_metric([name], v)
                yield g

            def describe(self):
                return []

        return _Collector()
