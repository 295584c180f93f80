"""Recruiters and instances through the API (in process, on both databases), the cost ledger
they are summed from, and the `scitq recruiter` / `scitq instance` commands against a real
server. Nothing is rented here: instance rows are written straight into the database, as
the recruitment loop would, and the only provider is `static` (no root, no network)."""
import json
import math
import subprocess
import sys
from datetime import timedelta

import pytest
import yaml
from sqlalchemy import insert

from apicalls import call, events, submit
from scitq.errors import BadRequest
from scitq.server.recruit import ledger, recruiters
from scitq.server.db import Database
from scitq.server.models import Instance, utcnow
from scitq.server.providers import Providers

PROVIDERS = {"static": {"hosts": [{"name": "lab1", "address": "192.0.2.10", "cpu": 8,
                                   "ram": 32, "disk": 100}]}}
BASE = {"batch": "align", "provider": "static", "flavor": "static-8c", "max_workers": 2,
        "tasks_per_worker": 10, "concurrency": 4}


@pytest.fixture
def app(db_url, tmp_path):
    """conftest's app, with a static provider configured (its fixture takes no providers)."""
    from scitq.server import create_app
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "PROVIDERS": PROVIDERS,
                      "PUBLIC_URL": "https://scitq.example:5000"})
    yield app
    app.extensions["scitq"].db.dispose()


def add(client, expect=201, **changes):
    spec = {k: v for k, v in {**BASE, **changes}.items() if v is not ...}
    return call(client, "POST", "/recruiters", expect, json=spec)


# --- create, list, show, delete ---------------------------------------------------

def test_recruiters_round_trip(app, client):
    first = add(client, rank=5)
    assert first["batch"] == "align" and first["flavor"] == "static-8c"
    assert (first["prefetch"], first["idle_timeout"], first["spot"], first["gpu"]) == (None, 300.0, False, False)
    assert first["deploy_timeout"] is None                       # the server's
    assert first["cost"] == {"spent": 0.0, "hourly": 0.0, "hosts": 0} and first["remaining"] == 0
    second = add(client, batch="call", flavor=..., min_cpu=4, min_ram=16, min_disk=50.5, gpu=True,
                 regions=["static", "static"], budget=12.5, max_hourly_cost=0.5, spot=True,
                 idle_timeout=0, prefetch=3, rank=-1, deploy_timeout=600)
    assert second["regions"] == ["static"]          # repeats dropped
    assert (second["min_cpu"], second["min_ram"], second["min_disk"], second["gpu"]) == (4, 16.0, 50.5, True)
    assert (second["budget"], second["max_hourly_cost"], second["idle_timeout"]) == (12.5, 0.5, 0.0)
    assert second["deploy_timeout"] == 600
    assert {b["name"] for b in call(client, "GET", "/batches")} == {"align", "call"}

    listed = call(client, "GET", "/recruiters")
    assert [r["id"] for r in listed] == [second["id"], first["id"]]      # by rank
    assert call(client, "GET", "/recruiters", query_string={"batch": "align"}) == [first]
    assert call(client, "GET", f"/recruiters/{second['id']}") == second
    submit(client, "true", "true", "true", batch="align")
    assert call(client, "GET", f"/recruiters/{first['id']}")["remaining"] == 3

    kinds = [e[0] for e in events(app) if e[1] == "recruiter"]
    assert kinds == ["recruiter.created", "recruiter.created"]
    assert call(client, "DELETE", f"/recruiters/{first['id']}") == {"deleted": first["id"], "live_hosts": 0}
    assert [e[0] for e in events(app) if e[1] == "recruiter"][-1] == "recruiter.deleted"
    call(client, "GET", f"/recruiters/{first['id']}", 404)
    call(client, "DELETE", f"/recruiters/{first['id']}", 404)
    call(client, "GET", f"/recruiters/{2 ** 70}", 404)
    assert call(client, "GET", "/recruiters") == [second]
    call(client, "GET", "/recruiters", 404, query_string={"batch": "no-such-batch"})
    assert call(client, "GET", "/batches/align")["counts"]["total"] == 3   # the batch stays


BAD = [
    ("unknown provider", {"provider": "nope"}),
    ("unconfigured provider", {"provider": "ovh"}),
    ("no provider", {"provider": ...}),
    ("empty provider", {"provider": ""}),
    ("flavor and minimums", {"min_cpu": 2}),
    ("neither flavor nor minimums", {"flavor": ...}),
    ("null flavor, no minimums", {"flavor": None}),
    ("gpu with a flavor", {"gpu": True}),
    ("no batch", {"batch": ...}),
    ("bad batch name", {"batch": "a/b"}),
    ("digits as batch name", {"batch": "2024"}),
    ("max_workers 0", {"max_workers": 0}),
    ("max_workers too many", {"max_workers": 10_001}),
    ("no max_workers", {"max_workers": ...}),
    ("tasks_per_worker 0", {"tasks_per_worker": 0}),
    ("no tasks_per_worker", {"tasks_per_worker": ...}),
    ("concurrency 2000", {"concurrency": 2000}),
    ("concurrency 0", {"concurrency": 0}),
    ("no concurrency", {"concurrency": ...}),
    ("concurrency a float", {"concurrency": 2.5}),
    ("negative prefetch", {"prefetch": -1}),
    ("negative idle timeout", {"idle_timeout": -1}),
    ("idle timeout over 30 days", {"idle_timeout": 31 * 86400}),
    ("zero deploy timeout", {"deploy_timeout": 0}),
    ("deploy timeout over a day", {"deploy_timeout": 86401}),
    ("deploy timeout a float", {"deploy_timeout": 120.5}),
    ("deploy timeout a string", {"deploy_timeout": "2m"}),
    ("negative budget", {"budget": -1}),
    ("zero budget", {"budget": 0}),
    ("zero max hourly cost", {"max_hourly_cost": 0}),
    ("regions a string", {"regions": "a,b"}),
    ("regions empty", {"regions": []}),
    ("regions of numbers", {"regions": [1, 2]}),
    ("min_cpu 0", {"flavor": ..., "min_cpu": 0}),
    ("min_ram 0", {"flavor": ..., "min_ram": 0}),
    ("negative min_disk", {"flavor": ..., "min_disk": -5}),
    ("min_disk a string", {"flavor": ..., "min_disk": "big"}),
    ("spot a string", {"spot": "yes"}),
    ("rank a float", {"rank": 1.5}),
    ("a misspelt field", {"max_worker": 3}),
]


@pytest.mark.parametrize("case", BAD, ids=[name for name, _ in BAD])
def test_check_recruiter_refuses_bad_specs_in_one_sentence(case, tmp_path):
    spec = {k: v for k, v in {**BASE, **case[1]}.items() if v is not ...}
    with pytest.raises(BadRequest) as err:
        recruiters.check_recruiter(spec, Providers(PROVIDERS, tmp_path))
    assert err.value.message and "\n" not in err.value.message


def test_bad_specs_are_400_and_store_nothing(app, client):
    before = events(app)
    for name, changes in BAD:
        answer = add(client, 400, **changes)
        assert answer["error"], name
    nan = client.post("/api/v1/recruiters", data=json.dumps({**BASE, "budget": math.nan}),
                      content_type="application/json")
    assert nan.status_code == 400, nan.get_data()
    assert call(client, "GET", "/recruiters") == []
    assert call(client, "GET", "/batches") == []          # not even the batch
    assert events(app) == before
    assert add(client, 400, flavor=...)["error"] == \
        "give --flavor or at least one of --min-cpu/--min-ram/--min-disk"
    assert "not configured on this server" in add(client, 400, provider="ovh")["error"]


# --- the cost ledger ---------------------------------------------------------------

def put(app, **row):
    with app.extensions["scitq"].db.write() as s:
        i = Instance(**{"provider": "static", "region": "static", "flavor": "static-8c", **row})
        s.add(i)
        s.flush()
        return i.id


def test_cost_ledger_recruiters_batches_and_instances(app, client):
    r1 = add(client)["id"]
    r2 = add(client, rank=1)["id"]
    r3 = add(client, batch="other")["id"]
    b1 = call(client, "GET", "/batches/align")["id"]
    b2 = call(client, "GET", "/batches/other")["id"]
    t0 = utcnow() - timedelta(hours=1)
    hour_ago = dict(created_at=t0, hourly_cost=2.0)
    ids = {
        "run": put(app, name="r1-run", recruiter_id=r1, batch_id=b1, status="running", **hour_ago),
        "dep": put(app, name="r1-dep", recruiter_id=r1, batch_id=b1, status="deploying", **hour_ago),
        "new": put(app, name="r1-new", recruiter_id=r1, batch_id=b1, status="creating", created_at=t0),
        "old": put(app, name="r1-old", recruiter_id=r1, batch_id=b1, status="deleted", created_at=t0,
                   hourly_cost=2.0, deleted_at=t0 + timedelta(minutes=45), cost=1.5),
        "bad": put(app, name="r1-bad", recruiter_id=r1, batch_id=b1, status="failed", created_at=t0,
                   cost=0.0, provider="ovh"),
        "r2-old": put(app, name="r2-old", recruiter_id=r2, batch_id=b1, status="deleted",
                      created_at=t0, hourly_cost=2.0, deleted_at=t0, cost=1.5),
        # Still billed while its deletion is under way, though no longer counted as live.
        "r2-going": put(app, name="r2-going", recruiter_id=r2, batch_id=b1, status="deleting",
                        created_at=t0 - timedelta(hours=1), hourly_cost=1.0),
        "orphan": put(app, name="orphan", recruiter_id=None, batch_id=b1, status="deleted",
                      created_at=t0, cost=0.25),
        "r3-run": put(app, name="r3-run", recruiter_id=r3, batch_id=b2, status="running",
                      created_at=t0 + timedelta(minutes=30), hourly_cost=4.0),
    }
    # Thousands of closed rows are summed by the database, not here.
    with app.extensions["scitq"].db.write() as s:
        s.execute(insert(Instance), [
            {"name": f"gone-{n}", "recruiter_id": r2, "batch_id": b1, "provider": "static",
             "region": "static", "flavor": "static-8c", "spot": False, "status": "deleted",
             "hourly_cost": 1.0, "cost": 0.01, "created_at": t0, "deleted_at": t0} for n in range(3000)])

    now = t0 + timedelta(hours=1)             # exact figures at a fixed instant
    with app.extensions["scitq"].db.read() as s:
        by_recruiter = ledger.cost_of(s, [r1, r2, r3, 999], now=now)
        by_batch = ledger.cost_of(s, batch_ids=[b1, b2], now=now)
        every = ledger.cost_of(s, now=now)
    assert by_recruiter[r1] == {"spent": 5.5, "hourly": 4.0, "hosts": 3}
    assert by_recruiter[r2] == {"spent": 3.5 + 30.0, "hourly": 0.0, "hosts": 0}
    assert by_recruiter[r3] == {"spent": 2.0, "hourly": 4.0, "hosts": 1}
    assert by_recruiter[999] == {"spent": 0.0, "hourly": 0.0, "hosts": 0}
    assert {k: every[k] for k in (r1, r2, r3)} == {k: by_recruiter[k] for k in (r1, r2, r3)}
    assert by_batch[b1] == {"spent": 5.5 + 33.5 + 0.25, "hourly": 4.0, "hosts": 3}
    assert by_batch[b2] == {"spent": 2.0, "hourly": 4.0, "hosts": 1}

    # Through the API, at the time of the request: a few seconds more of accrual at most.
    shown = call(client, "GET", f"/recruiters/{r1}")["cost"]
    assert (shown["hosts"], shown["hourly"]) == (3, 4.0) and 5.5 <= shown["spent"] < 5.52
    listed = {r["id"]: r["cost"] for r in call(client, "GET", "/recruiters")}
    assert listed[r3]["hosts"] == 1 and 2.0 <= listed[r3]["spent"] < 2.02
    batch = call(client, "GET", "/recruiters/cost", query_string={"batch": "align"})
    assert (batch["batch"], batch["hosts"], batch["hourly"]) == ("align", 3, 4.0)
    assert 39.25 <= batch["spent"] < 39.3
    assert call(client, "GET", "/recruiters/cost", query_string={"batch": b2})["hosts"] == 1
    call(client, "GET", "/recruiters/cost", 404, query_string={"batch": "no-such-batch"})
    call(client, "GET", "/recruiters/cost", 400)

    # Instances: each with its cost so far and its age; filters; newest first, by pages.
    one = call(client, "GET", f"/instances/{ids['run']}")
    assert one["name"] == "r1-run" and one["status"] == "running"
    assert 2.0 <= one["cost"] < 2.02 and 3600 <= one["age"] < 3700
    assert call(client, "GET", f"/instances/{ids['old']}")["cost"] == 1.5
    call(client, "GET", "/instances/99999999", 404)

    def names(**filters):
        page = call(client, "GET", "/instances", query_string=filters)
        return [i["name"] for i in page["items"]]

    live = names(status="live")
    assert live == ["r3-run", "r2-going", "r1-new", "r1-dep", "r1-run"]     # deleting: still billed
    assert names(status="deleting") == ["r2-going"]
    assert names(provider="ovh") == ["r1-bad"]
    assert names(recruiter_id=r1) == ["r1-bad", "r1-old", "r1-new", "r1-dep", "r1-run"]
    assert names(batch="other") == ["r3-run"]
    assert names(batch="align", status="live") == ["r2-going", "r1-new", "r1-dep", "r1-run"]
    call(client, "GET", "/instances", 400, query_string={"status": "bogus"})
    call(client, "GET", "/instances", 404, query_string={"batch": "no-such-batch"})

    seen, after = [], None
    while True:
        page = call(client, "GET", "/instances", query_string={"limit": 1000, **({"after": after} if after else {})})
        seen += [i["id"] for i in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert len(seen) == len(set(seen)) == 3009 and seen == sorted(seen, reverse=True)
    first = call(client, "GET", "/instances", query_string={"limit": 3, "status": "live"})
    rest = call(client, "GET", "/instances", query_string={"limit": 3, "status": "live",
                                                           "after": first["next"]})
    assert [i["name"] for i in first["items"] + rest["items"]] == live and rest["next"] is None

    # Deleting a recruiter stops it renting; its hosts stay live and keep their cost.
    assert call(client, "DELETE", f"/recruiters/{r1}") == {"deleted": r1, "live_hosts": 3}
    assert names(recruiter_id=r1) == []
    assert names(status="live") == live
    assert call(client, "GET", f"/instances/{ids['run']}")["recruiter_id"] is None
    after_delete = call(client, "GET", "/recruiters/cost", query_string={"batch": "align"})
    assert after_delete["hosts"] == 3 and after_delete["spent"] >= batch["spent"]


# --- the command line against a real server ------------------------------------------

def scitq(url, *args):
    return subprocess.run([sys.executable, "-m", "scitq.cli", "--server", url, *args],
                          capture_output=True, text=True, timeout=60)


def one_line_error(result):
    lines = result.stderr.strip().splitlines()
    return (result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
            and "Traceback" not in result.stdout + result.stderr)


def test_cli_recruiters_and_instances(db_url, procs, tmp_path):
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump(PROVIDERS))
    # A URL the hosts could use (never reached: batch align has no task, so nothing is rented).
    url = procs.server(db_url, "--providers", str(conf), "--public-url", "https://scitq.example:5000").url

    made = scitq(url, "recruiter", "add", "align", "--provider", "static", "--flavor", "static-8c",
                 "--max-workers", "2", "--tasks-per-worker", "10", "--concurrency", "4")
    assert made.returncode == 0, made.stderr
    first = int(made.stdout)
    made = scitq(url, "recruiter", "add", "align", "-p", "static", "--regions", "static",
                 "--min-cpu", "4", "--min-ram", "16", "--gpu", "-n", "3", "-k", "5", "-c", "2",
                 "--idle-timeout", "90", "--deploy-timeout", "120", "--budget", "10", "--spot",
                 "--rank", "1", "--json")
    assert made.returncode == 0, made.stderr
    second = json.loads(made.stdout)
    assert (second["regions"], second["min_cpu"], second["gpu"], second["spot"]) == (["static"], 4, True, True)
    assert second["deploy_timeout"] == 120

    listed = scitq(url, "recruiter", "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.split()[:1] in
            ([str(first)], [str(second["id"])])}
    assert "static-8c" in rows[str(first)] and "0/2" in rows[str(first)] and "5m" in rows[str(first)]
    assert "cpu>=4 ram>=16G gpu" in rows[str(second["id"])] and "1m30s" in rows[str(second["id"])]
    assert "10.00" in rows[str(second["id"])]
    assert "2m" in rows[str(second["id"])].split() and "server" in rows[str(first)].split()
    as_json = json.loads(scitq(url, "recruiter", "list", "--batch", "align", "--json").stdout)
    assert [r["id"] for r in as_json] == [first, second["id"]]
    shown = scitq(url, "recruiter", "show", str(second["id"]))
    assert shown.returncode == 0 and "tasks_per_worker: 5" in shown.stdout
    assert "deploy_timeout: 2m" in shown.stdout
    assert "deploy_timeout: server" in scitq(url, "recruiter", "show", str(first)).stdout
    assert json.loads(scitq(url, "recruiter", "show", str(first), "--json").stdout)["id"] == first

    # Ledger rows as the recruitment loop writes them (ended ones: nothing left for it to do).
    db = Database(db_url)
    try:
        with db.write() as s:
            t0 = utcnow() - timedelta(hours=2)
            s.add(Instance(name="lab1-host", recruiter_id=first, batch_id=second["batch_id"],
                           provider="static", region="static", flavor="static-8c",
                           hourly_cost=2.0, ip="192.0.2.10", status="deleted", created_at=t0,
                           deleted_at=t0 + timedelta(hours=2), cost=4.0))
    finally:
        db.dispose()
    cost = scitq(url, "recruiter", "cost", "align")
    assert cost.stdout.strip() == "batch align: spent 4.00, 0.00 per hour now, 0 live host(s)"
    assert json.loads(scitq(url, "recruiter", "cost", "align", "--json").stdout)["spent"] == 4.0
    assert json.loads(scitq(url, "instance", "list", "--json").stdout) == []      # live ones
    every = scitq(url, "instance", "list", "--all")
    line = next(line for line in every.stdout.splitlines() if "lab1-host" in line)
    assert all(word in line.split() for word in ("static", "deleted", "192.0.2.10", "2h", "2.00", "4.00"))
    assert [i["name"] for i in json.loads(scitq(url, "instance", "list", "--status", "deleted",
                                                "--batch", "align", "--json").stdout)] == ["lab1-host"]

    before = scitq(url, "recruiter", "list", "--json").stdout
    for args in [
        ("recruiter", "add", "align", "-p", "static", "-f", "static-8c", "--min-cpu", "2",
         "-n", "1", "-k", "1", "-c", "1"),
        ("recruiter", "add", "align", "-p", "static", "-n", "1", "-k", "1", "-c", "1"),
        ("recruiter", "add", "align", "-p", "ovh", "-f", "x", "-n", "1", "-k", "1", "-c", "1"),
        ("recruiter", "add", "align", "-p", "nope", "-f", "x", "-n", "1", "-k", "1", "-c", "1"),
        ("recruiter", "add", "a/b", "-p", "static", "-f", "x", "-n", "1", "-k", "1", "-c", "1"),
        ("recruiter", "add", "align", "-p", "static", "-f", "x", "-k", "1", "-c", "1"),
        ("recruiter", "add", "align", "-p", "static", "-f", "x", "-n", "0", "-k", "1", "-c", "1"),
        ("recruiter", "add", "align", "-p", "static", "-f", "x", "-n", "1", "-k", "1", "-c", "1",
         "--budget", "-1"),
        ("recruiter", "add", "align", "-p", "static", "-f", "x", "-n", "1", "-k", "1", "-c", "1",
         "--deploy-timeout", "0"),
        ("recruiter", "show", "999999"),
        ("recruiter", "delete", "999999"),
        ("recruiter", "list", "--batch", "no-such-batch"),
        ("recruiter", "cost", "no-such-batch"),
        ("instance", "list", "--status", "bogus"),
        ("instance", "list", "--all", "--status", "live"),
        ("instance", "show", "999999"),
    ]:
        result = scitq(url, *args)
        assert one_line_error(result), (args, result.returncode, result.stdout, result.stderr)
    assert scitq(url, "recruiter", "list", "--json").stdout == before

    deleted = scitq(url, "recruiter", "delete", str(first))
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"recruiter {first}: deleted"
    assert [r["id"] for r in json.loads(scitq(url, "recruiter", "list", "--json").stdout)] == [second["id"]]
