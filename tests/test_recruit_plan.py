"""`scitq recruiter plan BATCH` and `recruiter add --dry-run` (issue 17, acceptance 5), on the OVH
fake's catalog and quotas through the real OVH adapter, on both databases: what recruitment would
rent now and why, priced, with the time and cost at the batch's measured rate, and the offers
ruled out with their reason. The plan is the reconciler's own decision, read-only."""
import json
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import func, select, update

from apicalls import call, submit
from scitq.server.db import Database
from scitq.server.models import Batch, Event, Execution, Flavor, Instance, Recruiter, Task, utcnow

pytest.importorskip("openstack")
pytest.importorskip("ovh")
from fakes.openstack import FakeOpenStack  # noqa: E402
from test_provider_ovh import clean_env  # noqa: E402,F401  (autouse: credentials only from the test)

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]
PUBLIC_URL = "https://scitq.example:5000"      # never reached: nothing is rented here
# Cores 4 and up, no GPU: b2-15 (0.1361 an hour) and c2-30 (0.2722) in GRA11 and SBG5.
RECRUITER = {"batch": "align", "provider": "ovh", "min_cpu": 4, "max_workers": 3,
             "tasks_per_worker": 10, "concurrency": 4, "max_hourly_cost": 0.3}


@pytest.fixture
def cloud():
    with FakeOpenStack() as fake:
        fake.limits["GRA11"]["instances"] = 0          # GRA11's instance quota is used up
        yield fake


@pytest.fixture
def app(db_url, tmp_path, cloud):
    """The app (no loop started: nothing runs unless the test calls it) with the OVH fake."""
    from scitq.server import create_app
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "PUBLIC_URL": PUBLIC_URL,
                      "PROVIDERS": {"ovh": cloud.provider_config()}})
    yield app
    app.extensions["scitq"].db.dispose()


def measured(db, batch, ended, seconds):
    """`ended` tasks of the batch succeeded over the last `seconds`: its measured rate."""
    now = utcnow()
    with db.write() as s:
        ids = s.scalars(select(Task.id).join(Batch, Batch.id == Task.batch_id)
                        .where(Batch.name == batch).order_by(Task.id).limit(ended)).all()
        s.execute(update(Task).where(Task.id.in_(ids)).values(status="succeeded"))
        s.add_all(Execution(task_id=i, status="succeeded", assigned_at=now - timedelta(seconds=seconds),
                            started_at=now - timedelta(seconds=seconds), ended_at=now) for i in ids)


def expected_rows(drain):
    rent = {"recruiter": None, "action": "rent", "provider": "ovh", "region": "SBG5",
            "flavor": "b2-15", "count": 2, "hourly_cost": 0.1361, "why": "the cheapest that fits"}

    def out(region, flavor, price, why):
        return {"action": "ruled out", "provider": "ovh", "region": region, "flavor": flavor,
                "count": None, "hourly_cost": price, "cost": None, "drain": None, "why": why}
    return rent, [out("GRA11", "b2-15", 0.1361, "quota: no instance left in GRA11"),
                  out("SBG5", "b2-15", 0.1361, "max hourly cost 0.3: it would make 0.4083 an hour"),
                  out("GRA11", "c2-30", 0.2722, "max hourly cost 0.3: it would make 0.5444 an hour"),
                  out("SBG5", "c2-30", 0.2722, "max hourly cost 0.3: it would make 0.5444 an hour")]


def test_plan_of_a_batch_is_what_a_pass_then_does_and_writes_nothing(app, client, cloud, monkeypatch):
    st = app.extensions["scitq"]
    submit(client, *["true"] * 50, batch="align")
    rid = call(client, "POST", "/recruiters", 201, json=RECRUITER)["id"]
    measured(st.db, "align", ended=10, seconds=100)        # 6 tasks a minute: 40 left take 400 s

    writes = []
    real_write = st.db.write
    monkeypatch.setattr(st.db, "write", lambda: writes.append(1) or real_write())
    with st.db.read() as s:
        events = s.scalar(select(func.count()).select_from(Event))
    plan = call(client, "GET", "/batches/align/plan")
    assert writes == [] and st.reconciler.unhealthy == {}     # no write transaction at all
    with st.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == events
        assert s.scalar(select(func.count()).select_from(Flavor)) == 0    # the catalog: not stored
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
    assert cloud.count("POST", r"/servers$") == 0 and not cloud.live_servers()

    assert (plan["batch"], plan["remaining"], plan["rate"]) == ("align", 40, pytest.approx(6.0, abs=0.05))
    assert plan["drain"] == pytest.approx(400, abs=5)
    assert plan["recruiters"] == [{"id": rid, "want": 3, "live": 0, "concurrency": 4}]
    rent, ruled_out = expected_rows(plan["drain"])
    (rented, *rest) = plan["rows"]
    assert rented["cost"] == pytest.approx(2 * 0.1361 * plan["drain"] / 3600, abs=1e-4)
    assert rented == {**rent, "recruiter": rid, "cost": rented["cost"], "drain": plan["drain"]}
    assert rest == [{**r, "recruiter": rid} for r in ruled_out]
    assert f"({plan['rate']:g} a minute) they take {plan['drain']}s" in plan["note"]

    # A pass decides the same, by the same function (it does rent: its create jobs are queued).
    monkeypatch.setattr(st.db, "write", real_write)
    done = st.reconciler.reconcile()
    assert [(r, o.region, o.name) for r, o in done.create] == [(rid, "SBG5", "b2-15")] * 2
    assert [(o.region, o.name, why) for _, o, why in done.ruled_out] == [
        (r["region"], r["flavor"], r["why"]) for r in ruled_out]


def test_dry_run_stores_nothing_rents_nothing_and_says_the_duration_is_unknown(app, client, cloud):
    submit(client, *["true"] * 50, batch="align")
    plan = call(client, "POST", "/recruiters", 200, json={**RECRUITER, "dry_run": True})
    same = call(client, "POST", "/recruiters?dry_run=1", 200, json=RECRUITER)
    assert plan == same
    assert plan["rate"] is None and plan["drain"] is None and "no measured rate yet" in plan["note"]
    assert "run 8 at once" in plan["note"]                      # 2 hosts of concurrency 4
    assert plan["recruiters"] == [{"id": None, "want": 3, "live": 0, "concurrency": 4}]
    rent, ruled_out = expected_rows(None)
    assert plan["rows"] == [{**rent, "cost": None, "drain": None},
                            *[{**r, "recruiter": None} for r in ruled_out]]

    # A named flavor over the max hourly cost: ruled out in each region, nothing to rent.
    pricey = call(client, "POST", "/recruiters?dry_run=true", 200,
                  json={**RECRUITER, "batch": "fresh", "min_cpu": None, "flavor": "c2-30",
                        "max_hourly_cost": 0.1})
    assert pricey["remaining"] == 0 and pricey["rows"] == []    # a batch with no task wants none
    pricey = call(client, "POST", "/recruiters?dry_run=true", 200,
                  json={**RECRUITER, "min_cpu": None, "flavor": "c2-30", "max_hourly_cost": 0.1})
    assert [(r["action"], r["region"], r["why"]) for r in pricey["rows"]] == [
        ("ruled out", "GRA11", "max hourly cost 0.1: it would make 0.2722 an hour"),
        ("ruled out", "SBG5", "max hourly cost 0.1: it would make 0.2722 an hour")]

    assert call(client, "GET", "/recruiters") == []
    call(client, "GET", "/batches/fresh", 404)                  # not even its batch was made
    with app.extensions["scitq"].db.read() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
    assert cloud.count("POST", r"/servers$") == 0 and not cloud.live_servers()


def test_bad_plan_requests_are_one_line_4xx(app, client):
    submit(client, "true", batch="align")
    for method, path, body, status in [
            ("GET", "/batches/nope/plan", None, 404),
            ("GET", "/batches/align/plan", None, 404),                   # no recruiter
            ("POST", "/recruiters?dry_run=1", {**RECRUITER, "max_workers": 0}, 400),
            ("POST", "/recruiters?dry_run=1", {**RECRUITER, "provider": "azure"}, 400),
            ("POST", "/recruiters?dry_run=maybe", RECRUITER, 400),
            ("POST", "/recruiters", {**RECRUITER, "dry_run": "yes"}, 400)]:
        out = call(client, method, path, status, json=body)
        assert isinstance(out["error"], str) and "\n" not in out["error"], (path, out)
    assert "recruiter add align" in call(client, "GET", "/batches/align/plan", 404)["error"]
    assert call(client, "GET", "/recruiters") == []


# --- the command line, against a real server ------------------------------------------

def scitq(url, *args):
    return subprocess.run([sys.executable, "-m", "scitq.cli", "--server", url, *args],
                          capture_output=True, text=True, timeout=120)


def table_rows(out):
    """The table's body rows, as lists of cells."""
    return [[c.strip() for c in line.split("│")] for line in out.splitlines() if "│" in line]


def as_cells(row):
    money = "-" if row["cost"] is None else f"{row['cost']:.2f}"
    return [str(row["recruiter"] or "new"), row["action"], row["provider"], row["region"],
            row["flavor"], "-" if row["count"] is None else str(row["count"]),
            f"{row['hourly_cost']:.4f}", money]


def test_cli_plan_and_dry_run_print_the_table_and_the_same_rows_as_json(db_url, procs, tmp_path, cloud):
    settings = cloud.provider_config()
    settings["endpoint"] = cloud.url + "/1.0"        # the server is another process
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"ovh": settings}))
    # No pass runs (a day between them, and nothing here wakes the loop): the plan is all there is.
    url = procs.server(db_url, "--providers", str(conf), "--public-url", PUBLIC_URL,
                       "--recruit-tick", "86400").url
    from scitq.client import Client
    with Client(url) as c:
        c.add_tasks([{"command": "true"}] * 50, batch="align")
    db = Database(db_url)
    try:
        with db.write() as s:    # as `recruiter add` stores it, without waking the loop
            batch_id = s.scalar(select(Task.batch_id).limit(1))
            spec = {k: v for k, v in RECRUITER.items() if k != "batch"}
            s.add(Recruiter(batch_id=batch_id, prefetch=None, idle_timeout=300.0, gpu=False,
                            spot=False, rank=0, **spec))
    finally:
        db.dispose()

    shown = scitq(url, "recruiter", "plan", "align")
    assert shown.returncode == 0, shown.stderr
    header = next(line for line in shown.stdout.splitlines() if "┃" in line)
    assert [h.strip() for h in header.split("┃")] == [
        "recruiter", "action", "provider", "region", "flavor", "count", "per hour", "cost", "drain", "why"]
    as_json = scitq(url, "recruiter", "plan", "align", "--json")
    assert as_json.returncode == 0, as_json.stderr
    plan = json.loads(as_json.stdout)
    rows = table_rows(shown.stdout)
    assert [r[:8] for r in rows] == [as_cells(r) for r in plan["rows"]]
    assert [r["action"] for r in plan["rows"]] == ["rent"] + ["ruled out"] * 4
    assert rows[1][9].startswith("quota") and rows[2][9].startswith("max hourly cost 0.3")
    assert "no measured rate yet" in shown.stdout and plan["rate"] is None

    args = ("recruiter", "add", "align", "-p", "ovh", "--flavor", "c2-30", "-n", "2", "-k", "10",
            "-c", "2", "--max-hourly-cost", "0.5", "--dry-run")
    dry = scitq(url, *args)
    assert dry.returncode == 0, dry.stderr
    dry_json = json.loads(scitq(url, *args, "--json").stdout)
    assert [r[:8] for r in table_rows(dry.stdout)] == [as_cells(r) for r in dry_json["rows"]]
    # The stored recruiter (rank 0, first) keeps SBG5's room; the new one rents one c2-30 there.
    assert [(r["recruiter"], r["action"], r["region"], r["count"]) for r in dry_json["rows"]][:1] == [
        (None, "rent", "SBG5", 1)]
    assert any(r["why"].startswith("max hourly cost 0.5") for r in dry_json["rows"])

    assert len(json.loads(scitq(url, "recruiter", "list", "--json").stdout)) == 1
    assert json.loads(scitq(url, "instance", "list", "--all", "--json").stdout) == []
    assert cloud.count("POST", r"/servers$") == 0 and not cloud.live_servers()
    bad = scitq(url, "recruiter", "plan", "no-such-batch")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
