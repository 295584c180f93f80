"""/metrics read by prometheus_client's own parser during and after a real batch (a real
server and worker on each database), /healthz and /readyz, the setting that puts /metrics
behind a token, and the access log's lines (text and JSON)."""
import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

from procs import wait_until
from scitq.client import Client
from scitq.server import metrics
from scitq.server.models import Execution, Task
from test_ui import auth_app  # noqa: F401  (a fixture)

TASKS = 30          # every fifth fails


def scrape(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(families, name, suffix="", **labels):
    """{labels of the sample (without those asked for): value} of one family."""
    out = {}
    for sample in families[name].samples:
        if sample.name != name + suffix:
            continue
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            rest = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in labels))
            out[rest] = sample.value
    return out


def value(families, name, suffix="", **labels):
    return sum(samples(families, name, suffix, **labels).values())


def db_counts(db_url):
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            tasks = dict(conn.execute(select(Task.status, func.count()).group_by(Task.status)).all())
            executions = dict(conn.execute(select(Execution.status, func.count())
                                           .group_by(Execution.status)).all())
            started = conn.scalar(select(func.count()).where(Execution.started_at.is_not(None)))
    finally:
        engine.dispose()
    return tasks, executions, started


def test_metrics_during_and_after_a_batch_match_the_database(db_url, procs):
    server = procs.server(db_url, "--log-format", "json")
    url = server.url
    procs.worker(url, "m1", 4)
    with Client(url) as client:
        wait_until(lambda: client.workers(), 30, what="worker registration")
        client.add_tasks([{"command": f"sleep 0.3; exit {int(i % 5 == 0)}", "name": f"m{i}"}
                          for i in range(TASKS)], batch="metered")
        # During the batch: the parser reads every family, and some task is under way.
        wait_until(lambda: value(scrape(url), "scitq_executions_started", "_total") > 0, 30,
                   what="a started execution")
        during = scrape(url)
        for name in ("scitq_tasks", "scitq_workers", "scitq_slots", "scitq_instances",
                     "scitq_cost_spent", "scitq_cost_hourly", "scitq_jobs", "scitq_job_outcomes",
                     "scitq_executions_assigned", "scitq_executions_ended",
                     "scitq_dispatch_seconds", "scitq_report_seconds",
                     "scitq_http_request_seconds", "scitq_events"):
            assert name in during, name
        assert during["scitq_dispatch_seconds"].type == "histogram"
        assert during["scitq_report_seconds"].type == "histogram"
        assert value(during, "scitq_workers", status="running") == 1
        assert value(during, "scitq_slots", state="busy") + value(during, "scitq_slots", state="free") == 4
        assert value(during, "scitq_tasks", batch="metered") == TASKS
        wait_until(lambda: client.batch("metered")["counts"]["remaining"] == 0, 90,
                   what="the batch's end")

        # After it: the gauges (cached a few seconds) and the counters equal the database.
        tasks, executions, started = db_counts(db_url)
        assert tasks == {"succeeded": TASKS - TASKS // 5, "failed": TASKS // 5}

        def settled():
            after = scrape(url)
            return all(value(after, "scitq_tasks", batch="metered", status=st) == tasks.get(st, 0)
                       for st in ("pending", "assigned", "running", "succeeded", "failed"))
        wait_until(settled, metrics.CACHE_SECONDS * 3, what="fresh gauges")
        after = scrape(url)
        assert value(after, "scitq_executions_assigned", "_total") == sum(executions.values())
        assert value(after, "scitq_executions_started", "_total") == started
        for status in ("succeeded", "failed"):
            assert value(after, "scitq_executions_ended", "_total", status=status) == executions[status]
        assert value(after, "scitq_events", "_total", kind="execution.succeeded") == executions["succeeded"]
        assert value(after, "scitq_report_seconds", "_count") > 0
        assert value(after, "scitq_slots", state="busy") == 0
    procs.stop(server)

    # The access log: one JSON object a line, with the request's figures and no token.
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines()
             if line.startswith("{")]
    access = [rec for rec in lines if rec.get("logger") == "scitq.access"]
    scrapes = [rec for rec in access if rec["path"] == "/metrics"]
    assert scrapes and all(rec["status"] == 200 and rec["method"] == "GET" for rec in scrapes)
    assert all(isinstance(rec["ms"], (int, float)) and rec["principal"] == "-" for rec in scrapes)
    assert any(rec["path"].endswith("/reports") for rec in access)


@pytest.mark.parametrize("setting", [None, True, False])
def test_metrics_token_is_a_server_setting(db_url, tmp_path, setting):
    """METRICS_AUTH: by default /metrics needs a token when auth is on; True or False says so."""
    from scitq.server import create_app, tokens
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "AUTH": True,
                      "METRICS_AUTH": setting})
    try:
        client = app.test_client()
        with app.extensions["scitq"].db.write() as s:
            user = tokens.create_token(s, "prometheus", "user")[1]
            worker = tokens.create_token(s, "w", "worker")[1]
        anonymous = client.get("/metrics")
        if setting is False:
            assert anonymous.status_code == 200
            assert "scitq_tasks" in anonymous.get_data(as_text=True)
        else:
            assert anonymous.status_code == 401
            assert "token" in anonymous.get_json()["error"]
            assert client.get("/metrics", headers={"Authorization": f"Bearer {worker}"}).status_code == 403
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {user}"})
        assert ok.status_code == 200
        assert list(text_string_to_metric_families(ok.get_data(as_text=True)))
        # The API still needs its token whatever /metrics needs.
        assert client.get("/api/v1/batches").status_code == 401
    finally:
        app.extensions["scitq"].db.dispose()


def test_healthz_and_readyz(app, client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ok"}
    app.extensions["scitq"].db.engine.dispose()
    # A database that no longer answers: the process is alive, not ready.
    db = app.extensions["scitq"].db
    good = db.engine
    db.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    db.Session.configure(bind=db.engine)
    try:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and r.get_json()["status"] == "unavailable"
    finally:
        db.engine.dispose()
        db.engine = good
        db.Session.configure(bind=good)


def test_access_log_names_the_principal_never_the_token(auth_app, caplog):
    token = auth_app.user_token          # alice's
    client = auth_app.test_client()
    with caplog.at_level(logging.INFO, logger="scitq.access"):
        assert client.get("/api/v1/batches?secret=1",
                          headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/v1/batches").status_code == 401
    lines = [r for r in caplog.records if r.name == "scitq.access"]
    assert [(r.method, r.path, r.status, r.principal) for r in lines] == [
        ("GET", "/api/v1/batches", 200, "alice"), ("GET", "/api/v1/batches", 401, "-")]
    assert lines[0].getMessage().startswith("GET /api/v1/batches 200 ")
    assert lines[0].getMessage().endswith(" ms alice")
    assert all(token not in r.getMessage() and "secret" not in r.getMessage() for r in lines)


def test_the_cli_flags_reach_the_server(db_url, procs):
    """`scitq server --auth --no-metrics-auth`: /metrics open, the API still behind its token;
    a --log-format it does not know is a usage error (exit 2), not a traceback."""
    server = procs.server(db_url, "--auth", "--no-metrics-auth")
    assert "scitq_tasks" in scrape(server.url)
    assert httpx.get(server.url + "/api/v1/batches", timeout=30).status_code == 401
    bad = procs.spawn(["server", "--db", db_url, "--log-format", "xml"], "bad.log")
    assert bad.wait(30) == 2
    text = bad.log_path.read_text()
    assert "Traceback" not in text and "'xml' is not one of 'text', 'json'" in text
