"""Alert rules over monitoring windows: firing logic, persistence and the sinks.

The real-drift check uses the ACS employment data: reference (2015) rows held out of the profile
must stay quiet, the 2016-2018 analysis chunks (where NannyML reports drift) must fire.  The
prediction scores are the ``predicted_probability`` column shipped with the data (NannyML's
model, trained on 2014).
"""
import http.server
import json
import socket
import threading

import numpy as np
import pytest

from mlsd_jax.data.acs import ACS_FEATURES, load_acs_employment
from mlsd_jax.monitoring import Profile
from mlsd_jax.monitoring.alerts import AlertManager, AlertRule, LogSink, MetricsSink, WebhookSink
from mlsd_jax.monitoring.estimate import CBPE
from mlsd_jax.monitoring.windows import frame_from_columns, monitor

FEATS = list(ACS_FEATURES)


def _records(values, metric="error_rate", t0=100.0, step=60.0):
    return [{"index": i, "start": t0 + i * step, "end": t0 + (i + 1) * step, metric: v}
            for i, v in enumerate(values)]


def _fired(mgr, records):
    return [i for i, r in enumerate(records) if mgr.evaluate(r)]


# ----------------------------------------------------------------------------- rules
def test_rule_from_mapping_names_the_bad_field():
    r = AlertRule.from_mapping({"name": "p99", "metric": "latency.p99", "op": ">", "threshold": 250,
                                "windows": 3, "cooldown_s": 600, "severity": "critical"})
    assert (r.windows, r.cooldown_s, r.severity) == (3, 600, "critical")
    good = {"name": "x", "metric": "error_rate", "op": ">", "threshold": 0.1}
    cases = [({"op": "=="}, "field 'op'"), ({"threshold": "high"}, "field 'threshold'"),
             ({"threshold": float("nan")}, "field 'threshold'"), ({"windows": 0}, "field 'windows'"),
             ({"windows": 1.5}, "field 'windows'"), ({"cooldown_s": -1}, "field 'cooldown_s'"),
             ({"cooldown_windows": -2}, "field 'cooldown_windows'"),
             ({"cooldown_s": 5, "cooldown_windows": 2}, "at most one"),
             ({"severity": "urgent"}, "field 'severity'"), ({"metric": "latency..p99"}, "field 'metric'"),
             ({"name": ""}, "field 'name'"), ({"treshold": 1}, r"unknown field\(s\) \['treshold'\]")]
    for change, msg in cases:
        with pytest.raises(ValueError, match=msg):
            AlertRule.from_mapping({**good, **change})
    with pytest.raises(ValueError, match="field 'metric' is required"):
        AlertRule.from_mapping({"name": "x", "op": ">", "threshold": 1})
    with pytest.raises(ValueError, match="unique"):
        AlertManager([good, good])


def test_consecutive_breaches_and_cooldown_by_windows_and_seconds():
    vals = [0.0, 0.2, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.0, 0.9]
    recs = _records(vals)
    # Two consecutive breaching windows needed; no cool-down: fires on every window from the 2nd on.
    mgr = AlertManager([AlertRule("err", "error_rate", ">", 0.1, windows=2)])
    assert _fired(mgr, recs) == [4, 5, 6, 7, 8]
    # After a firing the next 2 windows are silent while the breach goes on.
    mgr = AlertManager([AlertRule("err", "error_rate", ">", 0.1, windows=2, cooldown_windows=2)])
    assert _fired(mgr, recs) == [4, 7]
    # One window suffices; 150 s of window time (windows end 60 s apart) silence the next two.
    mgr = AlertManager([AlertRule("err", "error_rate", ">=", 0.2, cooldown_s=150)])
    assert _fired(mgr, recs) == [1, 4, 7, 10]
    alerts = AlertManager([AlertRule("err", "error_rate", ">", 0.1)]).evaluate(recs[4])
    assert alerts[0].value == 0.3 and alerts[0].consecutive == 1 and alerts[0].window["index"] == 4
    # Null or absent values never breach; booleans count as 0 / 1.
    mgr = AlertManager([AlertRule("lat", "latency.p99", ">", 1.0),
                        AlertRule("flag", "features.AGEP.drift", ">=", 1)])
    assert mgr.evaluate({"end": 1.0, "latency": {"p99": None}}) == []
    assert mgr.evaluate({"end": 2.0}) == []
    assert [a.rule for a in mgr.evaluate({"end": 3.0, "features": {"AGEP": {"drift": True}}})] == ["flag"]


def test_state_survives_a_restart_without_refiring():
    rule = AlertRule("err", "error_rate", ">", 0.1, windows=2, cooldown_windows=3)
    recs = _records([0.5] * 10)
    mgr = AlertManager([rule])
    assert _fired(mgr, recs[:3]) == [1]
    state = json.loads(json.dumps(mgr.state_dict()))  # persisted as JSON
    restarted = AlertManager([rule, AlertRule("new", "error_rate", ">", 0.9)])
    restarted.load_state_dict(state)
    # Re-reading windows it already evaluated fires nothing; the cool-down and streak carry on.
    assert _fired(restarted, recs[:3]) == []
    assert [i + 3 for i in _fired(restarted, recs[3:])] == [5, 9]
    assert restarted.fired_counts() == {"err": 3, "new": 0}
    # A fresh manager (no state) would have fired again at once.
    assert _fired(AlertManager([rule]), recs[3:5]) == [1]
    with pytest.raises(ValueError, match="version"):
        restarted.load_state_dict({"version": 9})


# ----------------------------------------------------------------------------- real drift
@pytest.fixture(scope="module")
def acs_monitoring():
    ref = load_acs_employment("reference")
    ana = load_acs_employment("analysis")
    perm = np.random.default_rng(0).permutation(len(ref["AGEP"]))
    held, fit = perm[:20_000], np.sort(perm[20_000:])
    prob = "predicted_probability"
    profile = Profile.fit({**{c: ref[c][fit] for c in FEATS}, "prob": ref[prob][fit]},
                          kinds={"AGEP": "numeric", "prob": "numeric"})
    cbpe = CBPE(chunk_size=5000).fit(ref["employed"][fit], ref[prob][fit])
    quiet = monitor(frame_from_columns({c: ref[c][held] for c in FEATS}, {"prob": ref[prob][held]}),
                    profile, size=5000, estimator=cbpe)
    drifted = monitor(frame_from_columns({c: ana[c] for c in FEATS}, {"prob": ana[prob]}),
                      profile, size=5000, estimator=cbpe)
    return quiet, drifted


def _rules():
    return [AlertRule("many_features", "drift.n_drifted", ">=", 5, windows=2, cooldown_windows=5),
            AlertRule("relp", "features.RELP.p_adjusted", "<", 0.001),
            AlertRule("agep", "features.AGEP.drift", ">=", 1, severity="info"),
            AlertRule("auc_drop", "quality.estimated.roc_auc", "<", 0.88, severity="critical"),
            AlertRule("pred_shift", "prediction.p_value", "<", 1e-4)]


def test_rules_fire_on_real_drift_and_stay_quiet_on_reference(acs_monitoring, tmp_path):
    quiet, drifted = acs_monitoring
    assert len(quiet) == 4 and len(drifted) == 42
    mgr = AlertManager(_rules(), [LogSink(tmp_path / "alerts.jsonl")])
    assert [a for w in quiet.windows for a in mgr.evaluate(w)] == []
    fired = {}
    for w in drifted.windows:
        for a in mgr.evaluate(w):
            fired.setdefault(a.rule, []).append(w["index"])
    nd = drifted.series("drift.n_drifted")
    first = next(i for i in range(1, len(nd)) if nd[i - 1] >= 5 and nd[i] >= 5)
    assert fired["many_features"][0] == first
    assert np.all(np.diff(fired["many_features"]) >= 6)  # the 5-window cool-down holds
    relp = drifted.series("features.RELP.p_adjusted")
    assert fired["relp"] == [i for i, p in enumerate(relp) if p < 0.001] and len(fired["relp"]) >= 25
    assert 1 <= len(fired["agep"]) < len(fired["relp"])
    # The RELP-17 chunk (NannyML's realised AUC ~0.80) is the one the AUC estimate flags.
    relp17 = int(np.argmax([w["features"]["RELP"]["psi"] for w in drifted.windows]))
    assert relp17 in fired["auc_drop"] and len(fired["auc_drop"]) <= 2
    assert "pred_shift" in fired
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert len(lines) == sum(len(v) for v in fired.values())
    first_alert = json.loads(lines[0])
    assert first_alert["delivery"] == {} and first_alert["rule"] in fired


# ----------------------------------------------------------------------------- sinks
class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: list = []
    fail_first: int = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/alerts":
            self.send_response(404)
            self.end_headers()
            return
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        type(self).bodies.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def hook_server():
    _Hook.bodies, _Hook.fail_first = [], 0
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/alerts"
    srv.shutdown()
    srv.server_close()


def test_webhook_posts_json_and_retries(hook_server):
    hook = WebhookSink(hook_server, timeout=5, retries=2, backoff_s=0.01)
    mgr = AlertManager([AlertRule("err", "error_rate", ">", 0.1, severity="critical")], [hook])
    alerts = mgr.evaluate({"index": 0, "start": 0.0, "end": 60.0, "error_rate": 0.25})
    assert len(_Hook.bodies) == 1
    ctype, body = _Hook.bodies[0]
    assert ctype == "application/json"
    assert body["rule"] == "err" and body["value"] == 0.25 and body["severity"] == "critical"
    assert body["window"] == {"index": 0, "start": 0.0, "end": 60.0}
    assert alerts[0].delivery == {"webhook": "ok"} and hook.sent == 1
    # A 503 on the first try: retried, delivered once.
    _Hook.fail_first = 1
    mgr.evaluate({"index": 1, "start": 60.0, "end": 120.0, "error_rate": 0.3})
    assert len(_Hook.bodies) == 2 and hook.failures == []
    # A 4xx is the receiver refusing the alert: recorded, not retried.
    hook.url = hook_server.replace("/alerts", "/missing")
    alerts = mgr.evaluate({"index": 2, "start": 120.0, "end": 180.0, "error_rate": 0.3})
    assert hook.failures[0]["attempts"] == 1 and "404" in alerts[0].delivery["webhook"]


def test_dead_webhook_never_raises_and_is_recorded(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    hook = WebhookSink(f"http://127.0.0.1:{port}/x", timeout=1, retries=2, backoff_s=0.01)
    log = LogSink(tmp_path / "a.jsonl")
    mgr = AlertManager([AlertRule("err", "error_rate", ">", 0.1)], [hook, log])
    alerts = mgr.evaluate({"index": 0, "end": 1.0, "error_rate": 0.5})
    assert len(alerts) == 1 and hook.sent == 0
    assert len(hook.failures) == 1 and hook.failures[0]["attempts"] == 3
    assert alerts[0].delivery["webhook"].startswith("failed after 3 attempt(s)")
    assert alerts[0].delivery["log"] == "ok"  # the other sinks still get the alert
    with pytest.raises(ValueError, match="http"):
        WebhookSink("ftp://example.org/hook")

    class Broken:
        name = "broken"

        def emit(self, alert):
            raise RuntimeError("disk full")

    mgr = AlertManager([AlertRule("err", "error_rate", ">", 0.1)], [Broken(), log])
    alerts = mgr.evaluate({"index": 0, "end": 1.0, "error_rate": 0.5})
    assert alerts[0].delivery == {"broken": "RuntimeError: disk full", "log": "ok"}
    assert mgr.sink_errors[0]["sink"] == "broken"
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 2


def test_log_sink_appends_valid_jsonl(tmp_path):
    path = tmp_path / "sub" / "alerts.jsonl"
    rule = AlertRule("lat", "latency.p99", ">", 100.0)
    for run in range(2):  # two monitor runs append to the same file
        mgr = AlertManager([rule], [LogSink(path)])
        for i in range(3):
            mgr.evaluate({"index": i, "start": float(i), "end": float(i + 1),
                          "latency": {"p99": 150.0 + i + 10 * run}})
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["value"] for r in rows] == [150.0, 151.0, 152.0, 160.0, 161.0, 162.0]
    assert all(r["rule"] == "lat" and r["metric"] == "latency.p99" for r in rows)


def test_metrics_sink_renders_prometheus_text():
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    sink = MetricsSink(include=["latency", "error_rate", "drift.n_drifted", "features.AGEP"])
    mgr = AlertManager([AlertRule('err "5xx"', "error_rate", ">", 0.1, severity="critical"),
                        AlertRule("lat", "latency.p99", ">", 100.0)], [sink])
    for i, (err, p99) in enumerate([(0.2, 50.0), (0.3, 120.0), (0.0, 130.0)]):
        rec = {"index": i, "end": float(i), "error_rate": err, "latency": {"p50": 10.0, "p99": p99},
               "drift": {"n_drifted": 2, "drifted": ["AGEP", "RELP"]},
               "features": {"AGEP": {"drift": True, "p_value": 1e-9}, "RELP": {"psi": 3.0}}}
        mgr.evaluate(rec)
    text = sink.render()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {s.labels["rule"]: s.value for s in fams["mlsd_monitor_alerts"].samples
              if s.name == "mlsd_monitor_alerts_total"}
    assert counts == {'err "5xx"': 2.0, "lat": 2.0}
    gauges = {s.labels["name"]: s.value for s in fams["mlsd_monitor_metric"].samples}
    assert gauges == {"error_rate": 0.0, "latency.p50": 10.0, "latency.p99": 130.0,
                      "drift.n_drifted": 2.0, "features.AGEP.drift": 1.0, "features.AGEP.p_value": 1e-9}
    assert 'mlsd_monitor_alerts_total{rule="err \\"5xx\\"",severity="critical"} 2' in text
    # The same families through prometheus_client, as the server's /metrics would expose them.
    reg = CollectorRegistry()
    reg.register(sink.collector())
    exposed = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {s.labels["name"]: s.value for s in exposed["mlsd_monitor_metric"].samples} == gauges
    assert {s.labels["rule"]: s.value for s in exposed["mlsd_monitor_alerts"].samples
            if s.name == "mlsd_monitor_alerts_total"} == counts
    # A restored manager restores the counters too.
    sink2 = MetricsSink()
    mgr2 = AlertManager(mgr.rules, [sink2])
    mgr2.load_state_dict(mgr.state_dict())
    assert 'mlsd_monitor_alerts_total{rule="lat",severity="warning"} 2' in sink2.render()
    # The default gauges leave the per-feature statistics out (one series per feature and statistic).
    mgr2.evaluate({**rec, "end": 10.0})
    assert 'name="latency.p99"' in sink2.render() and "features." not in sink2.render()


def test_monitor_metrics_reach_the_servers_metrics_endpoint(tmp_path):
    """The monitor's metrics.prom, listed in serve's metrics_textfiles, is appended to the body
    the server's GET /metrics answers with (exposition(), read at each scrape); a missing file
    is skipped."""
    from prometheus_client.parser import text_string_to_metric_families

    from mlsd_jax.serving import serve_config
    from mlsd_jax.serving.metrics import exposition, set_textfiles

    sink = MetricsSink()
    mgr = AlertManager([AlertRule("lat", "latency.p99", ">", 100.0)], [sink])
    prom = tmp_path / "metrics.prom"
    cfg = serve_config({"model_name": "m", "model_base_path": str(tmp_path),
                        "metrics_textfiles": [str(prom), str(tmp_path / "missing.prom")]})
    assert cfg.metrics_textfiles == [str(prom), str(tmp_path / "missing.prom")]
    set_textfiles(cfg.metrics_textfiles)  # what build_state does
    try:
        before = exposition()[0].decode()
        mgr.evaluate({"index": 0, "end": 1.0, "latency": {"p99": 150.0}})
        prom.write_text(sink.render())
        after = exposition()[0].decode()
    finally:
        set_textfiles([])
    assert "mlsd_monitor_alerts_total" not in before and "mlsd_serving" in before
    fams = {f.name: f for f in text_string_to_metric_families(after)}
    assert [s.value for s in fams["mlsd_monitor_alerts"].samples
            if s.name == "mlsd_monitor_alerts_total"] == [1.0]
    assert any(name.startswith("mlsd_serving") for name in fams)
