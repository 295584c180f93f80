"""The web UI: its compact JSON in-process, and its pages in headless Chromium against a real
server and real workers (on SQLite and on PostgreSQL), with screenshots of every page."""
import contextlib
import re
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from apicalls import call, submit
from procs import wait_until
from scitq.server.models import Batch, Execution, Instance, Job, Recruiter, Task, utcnow
from scitq.server.rollups import Rollups, minute_of
from ui_browser import PHONE, browser, page, shots  # noqa: F401  (fixtures)

@contextlib.contextmanager
def serving(app):
    """An in-process app over HTTP on loopback (no dispatcher nor recruitment loop)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


LINES = "for i in $(seq 1 300); do echo line $i; sleep 0.2; done"


def expect():
    from playwright.sync_api import expect as expect_
    return expect_


def batch_row(page, name):
    return page.locator("#batches tbody tr").filter(
        has=page.get_by_role("rowheader", name=name, exact=True))


def worker_row(page, name):
    return page.locator("#workers tbody tr").filter(
        has=page.get_by_role("rowheader", name=name, exact=True))


def output_lines(page):
    return re.findall(r"^line \d+$", page.locator("#output").inner_text(), re.M)


# --- in the browser, against real processes ------------------------------------------

def test_the_ui_follows_and_steers_a_real_batch(live, procs, page, shots):
    """Progress reaches 100% without reload; +1 concurrency reaches the worker; a running
    task's output grows on its page; kill makes it fail; stop and relaunch-failed work."""
    ex = expect()
    procs.worker(live.url, "w1", 2)
    wait_until(lambda: live.workers(), 30, what="worker registration")

    page.goto(live.url + "/")                      # the root leads to the UI
    assert page.url.endswith("/ui/")
    # Every value the progress bar takes, and a mark that a reload would wipe.
    page.evaluate("""() => {
        window.noReload = true;
        window.seen = [];
        new MutationObserver(() => document.querySelectorAll('[role=progressbar]')
            .forEach(b => window.seen.push(Number(b.getAttribute('aria-valuenow')))))
          .observe(document.body, {subtree: true, attributes: true, childList: true});
    }""")
    live.add_tasks([{"command": f"sleep 0.25; echo task {i}", "name": f"t{i}"} for i in range(50)],
                   batch="fifty")
    bar = batch_row(page, "fifty").locator("[role=progressbar]")
    ex(bar).to_have_attribute("aria-valuenow", "100", timeout=90_000)
    assert page.evaluate("window.noReload") is True
    seen = page.evaluate("window.seen")
    assert any(0 < v < 100 for v in seen), seen          # it moved while we watched
    row = batch_row(page, "fifty")
    ex(row.locator('[data-count="succeeded"]')).to_have_text("50")
    ex(row.locator('[data-count="remaining"]')).to_have_text("0")
    ex(row.locator("td").nth(13)).not_to_have_text("")   # the ETA column says done
    shots(page, "dashboard")

    # Concurrency 2 -> 3 from the workers page; the worker takes 3 tasks at once.
    page.goto(live.url + "/ui/workers")
    w1 = worker_row(page, "w1")
    ex(w1.locator(".value.concurrency")).to_have_text("0/2")
    w1.get_by_role("button", name="Raise the concurrency of w1").click()
    ex(w1.locator(".value.concurrency")).to_have_text("0/3")
    assert live.worker("w1")["concurrency"] == 3
    slow = live.add_tasks([{"command": LINES, "name": f"slow{i}"} for i in range(3)], batch="slow")
    ex(w1.locator(".value.concurrency")).to_have_text("3/3", timeout=30_000)
    w1.get_by_role("button", name="Raise the prefetch of w1").click()
    ex(w1.locator(".value.prefetch")).to_have_text("1")
    assert live.worker("w1")["prefetch"] == 1
    shots(page, "workers")

    # The running tasks of the batch, then one of them: its output grows as we watch.
    page.goto(live.url + "/ui/tasks?batch=slow&status=running")
    ex(page.locator("#tasks tbody tr")).to_have_count(3)
    ex(page.locator("#total")).to_have_text("3 task(s) running in batch slow")
    shots(page, "tasks")
    page.locator("#tasks tbody tr").first.locator("a").click()
    page.wait_for_url(re.compile(r"/ui/tasks/\d+$"))
    tid = int(page.url.rsplit("/", 1)[1])
    assert tid in slow
    page.evaluate("window.noReload = true")
    ex(page.locator("#status")).to_have_text("running")
    wait_until(lambda: len(output_lines(page)) >= 2, 20, what="first output lines")
    first = len(output_lines(page))
    wait_until(lambda: len(output_lines(page)) >= first + 5, 20, what="more output lines")
    lines = output_lines(page)
    assert lines == [f"line {i}" for i in range(1, len(lines) + 1)]   # in order, none twice
    assert page.evaluate("window.noReload") is True
    shots(page, "task-running")

    page.get_by_role("button", name="Kill").click()
    ex(page.locator("#status")).to_have_text("failed", timeout=20_000)
    ex(page.locator("#executions tbody tr").first.locator("td").nth(4)).to_have_text("killed")
    assert live.task(tid)["status"] == "failed"
    shots(page, "task-killed")

    # Stop the batch (its two other tasks fail), relaunch what failed, stop again.
    page.goto(live.url + "/ui/")
    row = batch_row(page, "slow")
    ex(row.locator('[data-count="running"]')).to_have_text("2")
    row.get_by_role("button", name="Stop batch slow").click()
    ex(row.locator('[data-count="failed"]')).to_have_text("3", timeout=20_000)
    ex(row.locator(".badge")).to_have_text("paused")
    row.get_by_role("button", name="Relaunch the failed tasks of batch slow").click()
    ex(page.locator("#flash")).to_contain_text("3 failed task(s) relaunched")
    ex(row.locator('[data-count="failed"]')).to_have_text("0")
    ex(row.locator('[data-count="pending"]')).to_have_text("3")
    row.get_by_role("button", name="Resume batch slow").click()
    ex(row.locator('[data-count="running"]')).to_have_text("3", timeout=20_000)
    shots(page, "dashboard-slow")
    row.get_by_role("button", name="Stop batch slow").click()
    ex(row.locator('[data-count="failed"]')).to_have_text("3", timeout=20_000)

    # Every other page renders, at laptop and at phone width.
    for path, name in (("/ui/recruiters", "recruiters"), ("/ui/jobs", "jobs"),
                       ("/ui/login", "login")):
        page.goto(live.url + path)
        page.wait_for_load_state("networkidle")
        shots(page, name)
    ex(page.locator("#auth-off")).to_be_visible()     # this server has no secret key
    page.set_viewport_size(PHONE)
    for path, name in (("/ui/", "phone-dashboard"), ("/ui/workers", "phone-workers"),
                       (f"/ui/tasks/{tid}", "phone-task"), ("/ui/tasks?batch=fifty", "phone-tasks")):
        page.goto(live.url + path)
        page.wait_for_load_state("networkidle")
        # The page itself never scrolls sideways: wide tables scroll inside their box.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shots(page, name)


# --- the UI's own JSON, in-process ----------------------------------------------------

def _ended(s, task, status, started, ended, worker="w"):
    """An execution of task that ran from `started` to `ended` (datetimes)."""
    s.add(Execution(task_id=task.id, worker_name=worker, status=status, assigned_at=started,
                    started_at=started, ended_at=ended, return_code=0 if status == "succeeded" else 1))


def test_dashboard_json_counts_throughput_eta_workers_and_cost(app, client):
    a = submit(client, *[f"echo a{i}" for i in range(10)], batch="a")
    submit(client, *[f"echo b{i}" for i in range(5)], batch="b")
    call(client, "POST", "/batches/b/pause")
    call(client, "POST", "/batches", 201, json={"name": "empty"})
    call(client, "POST", "/workers", 201, json={"name": "w2", "concurrency": 2})
    call(client, "POST", "/workers", 201, json={"name": "w3", "concurrency": 3})
    now = utcnow()
    db = app.extensions["scitq"].db
    with db.write() as s:
        tasks = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(a)))}
        # 6 succeeded and 1 failed in the last minute, the first started 60 s ago: 7/min.
        for i, tid in enumerate(a[:7]):
            tasks[tid].status = "succeeded" if i < 6 else "failed"
            _ended(s, tasks[tid], tasks[tid].status, now - timedelta(seconds=60 - i),
                   now - timedelta(seconds=30 - i))
        # An attempt ended 10 minutes ago is outside the window; a running one has not ended.
        _ended(s, tasks[a[0]], "failed", now - timedelta(minutes=11), now - timedelta(minutes=10))
        tasks[a[7]].status = "running"
        s.add(Execution(task_id=a[7], worker_name="w2", status="running", started_at=now))
        batch_a = s.scalar(select(Batch).where(Batch.name == "a"))
        s.add(Instance(name="host1", batch_id=batch_a.id, provider="fake", region="r1", flavor="f1",
                       hourly_cost=2.0, status="running", created_at=now - timedelta(minutes=30)))
        s.add(Instance(name="host0", batch_id=batch_a.id, provider="fake", region="r1", flavor="f1",
                       hourly_cost=2.0, status="deleted", cost=5.0,
                       created_at=now - timedelta(hours=3), deleted_at=now - timedelta(hours=1)))

    Rollups(db).roll()         # the throughput is read from the per-minute rollups
    before = utcnow()
    r = client.get("/ui/api/dashboard")
    after = utcnow()
    assert r.status_code == 200 and r.is_json
    d = r.get_json()
    rows = {b["name"]: b for b in d["batches"]}
    assert list(rows) == ["a", "b", "empty"]
    ra = rows["a"]
    assert set(ra) == {"id", "name", "status", "concurrency", "counts", "throughput", "eta", "cost"}
    assert ra["counts"] == {"waiting": 0, "pending": 2, "assigned": 0, "running": 1, "succeeded": 6,
                            "failed": 1, "canceled": 0, "remaining": 3, "total": 10}
    # 7 ended over the time since the start of the minute of the first of them
    first = minute_of(now - timedelta(seconds=30))
    assert 7 * 60 / (after - first).total_seconds() - 0.01 <= ra["throughput"] \
        <= 7 * 60 / (before - first).total_seconds() + 0.01
    assert ra["eta"] == pytest.approx(3 / ra["throughput"] * 60, abs=1)
    assert ra["cost"]["hosts"] == 1 and ra["cost"]["hourly"] == 2.0
    assert ra["cost"]["spent"] == pytest.approx(6.0, abs=0.01)      # 5 closed + 30 min at 2/h
    rb = rows["b"]
    assert rb["status"] == "paused" and rb["counts"]["pending"] == 5
    assert rb["throughput"] == 0 and rb["eta"] is None and rb["cost"] is None
    assert rows["empty"]["counts"]["total"] == 0 and rows["empty"]["eta"] == 0
    assert d["workers"] == {"by_status": {"running": 2}, "slots": 5, "busy": 1}
    assert d["cost"]["hosts"] == 1 and d["cost"]["spent"] == pytest.approx(6.0, abs=0.01)


def test_relaunch_failed_relaunches_every_failed_task_of_the_batch_only(app, client):
    from scitq.server import lifecycle
    ids = submit(client, "false", "false", "false", "true", batch="r")
    dependent = call(client, "POST", "/tasks", 201,
                     json={"command": "echo after", "batch": "r", "depends_on": [ids[0]]})["id"]
    other = submit(client, "false", batch="other")
    with app.extensions["scitq"].db.write() as s:
        moves = lifecycle.Moves()
        for tid in ids[:3] + other:
            moves.fail({"id": tid, "attempt": 1, "retries": 0}, "exit 1", retry=False)
        moves.write(s)
        s.get(Task, ids[3]).status = "succeeded"
    assert call(client, "GET", f"/tasks/{dependent}")["status"] == "canceled"

    assert client.get("/ui/api/batches/r/relaunch-failed").status_code == 405   # never a GET
    r = client.post("/ui/api/batches/r/relaunch-failed")
    assert r.status_code == 200 and r.get_json() == {"batch": "r", "relaunched": 3}
    assert [call(client, "GET", f"/tasks/{t}")["status"] for t in ids] == ["pending"] * 3 + ["succeeded"]
    assert call(client, "GET", f"/tasks/{dependent}")["status"] == "waiting"   # waits again
    assert call(client, "GET", f"/tasks/{other[0]}")["status"] == "failed"     # another batch
    assert client.post("/ui/api/batches/r/relaunch-failed").get_json()["relaunched"] == 0
    missing = client.post("/ui/api/batches/nope/relaunch-failed")
    assert missing.status_code == 404 and missing.get_json()["error"] == "no batch 'nope'"


def test_pages_render_and_only_posts_change_anything(app, client):
    assert client.get("/").headers["Location"].endswith("/ui/")
    for path in ("/ui/", "/ui/tasks", "/ui/tasks/12", "/ui/workers", "/ui/recruiters", "/ui/jobs",
                 "/ui/login"):
        r = client.get(path)
        assert r.status_code == 200, path
        html = r.get_data(as_text=True)
        assert '<meta name="scitq-csrf" content="">' in html
        assert "/ui/static/common.js" in html and 'name="viewport"' in html
    for name in ("common.js", "dashboard.js", "tasks.js", "task.js", "workers.js",
                 "recruiters.js", "jobs.js", "app.css"):
        assert client.get(f"/ui/static/{name}").status_code == 200, name
    changing = {rule.endpoint for rule in app.url_map.iter_rules()
                if rule.endpoint.startswith("ui.") and rule.methods - {"GET", "HEAD", "OPTIONS"}}
    assert changing == {"ui.login", "ui.logout", "ui.relaunch_failed"}
    js = "".join(client.get(f"/ui/static/{n}").get_data(as_text=True)
                 for n in ("common.js", "dashboard.js", "task.js"))
    assert 'credentials: "same-origin"' in js and "/ui/login" in js and "X-CSRF-Token" in js


def test_with_auth_off_login_keeps_nothing(app, client):
    off = client.get("/ui/login").get_data(as_text=True)
    assert "Authentication is off" in off and 'name="token"' not in off
    r = client.post("/ui/login", data={"token": "t0k"})       # nothing to log in to
    assert r.status_code == 200 and "Authentication is off" in r.get_data(as_text=True)
    assert "Set-Cookie" not in r.headers
    assert '<meta name="scitq-csrf" content="">' in client.get("/ui/").get_data(as_text=True)


@pytest.fixture
def auth_app(db_url, tmp_path):
    """The app with auth on (as `scitq up` runs it), and a user's and a worker's token."""
    from scitq.server import create_app, tokens
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "AUTH": True})
    with app.extensions["scitq"].db.write() as s:
        app.user_token = tokens.create_token(s, "alice", "user")[1]
        app.worker_token = tokens.create_token(s, "w1", "worker")[1]
    yield app
    app.extensions["scitq"].db.dispose()


def test_with_auth_on_the_ui_json_needs_a_user_token_and_login_checks_it(auth_app):
    client = auth_app.test_client()
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    assert client.get("/ui/").status_code == 200                 # pages hold no data
    assert client.get("/ui/api/dashboard").status_code == 401
    assert client.post("/ui/api/batches/x/relaunch-failed").status_code == 401
    r = client.get("/ui/api/dashboard", headers=bearer(auth_app.worker_token))
    assert r.status_code == 403 and "worker token" in r.get_json()["error"]
    assert client.get("/ui/api/dashboard", headers=bearer(auth_app.user_token)).status_code == 200
    assert client.post("/ui/api/batches/x/relaunch-failed",
                       headers=bearer(auth_app.user_token)).status_code == 404   # past the check

    page = client.get("/ui/login?next=/ui/workers").get_data(as_text=True)
    assert 'name="token"' in page and 'type="password"' in page and 'value="/ui/workers"' in page
    assert client.post("/ui/login", data={"token": " "}).status_code == 400
    bad = client.post("/ui/login", data={"token": "scitq_nope"})
    assert bad.status_code == 401 and "unknown or revoked token" in bad.get_data(as_text=True)
    assert client.post("/ui/login", data={"token": auth_app.worker_token}).status_code == 403
    assert '<meta name="scitq-csrf" content="">' in client.get("/ui/").get_data(as_text=True)
    r = client.post("/ui/login", data={"token": auth_app.user_token, "next": "/ui/jobs"})
    assert r.status_code == 302 and r.headers["Location"] == "/ui/jobs"
    page = client.get("/ui/").get_data(as_text=True)
    assert auth_app.user_token not in page and '<meta name="scitq-csrf" content="">' not in page
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):   # local only
        r = client.post("/ui/login", data={"token": auth_app.user_token, "next": evil})
        assert r.headers["Location"] == "/ui/", evil


def test_with_auth_on_the_browser_logs_in_then_sees_the_data(auth_app, page, shots):
    """A page whose calls get a 401 goes to the login page; the token given there is sent
    by every call afterwards, and the page it came from shows its data."""
    ex = expect()
    with auth_app.extensions["scitq"].db.write() as s:
        from scitq.server import task_store
        task_store.create_tasks(s, [{"command": "true"}] * 3, "secret-batch")
    with serving(auth_app) as url:
        page.goto(url + "/ui/workers")
        page.wait_for_url(re.compile(r"/ui/login\?next="))
        shots(page, "login")
        page.get_by_label("API token").fill("scitq_wrong")
        page.get_by_role("button", name="Log in").click()
        ex(page.get_by_role("alert")).to_have_text("unknown or revoked token")
        page.get_by_label("API token").fill(auth_app.user_token)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(url + "/ui/workers")
        page.get_by_role("link", name="Dashboard").click()
        ex(batch_row(page, "secret-batch").locator('[data-count="pending"]')).to_have_text("3")
        ex(page.get_by_role("button", name="Log out")).to_be_visible()
        page.get_by_role("button", name="Log out").click()
        page.goto(url + "/ui/")
        page.wait_for_url(re.compile(r"/ui/login\?next="))


# --- in the browser: recruiters, hosts and jobs (rows made in the database) -------------

@pytest.fixture
def served(app):
    with serving(app) as url:
        yield url


def test_recruiters_hosts_and_a_live_job_log_in_the_browser(app, served, page, shots):
    ex = expect()
    st = app.extensions["scitq"]
    now = utcnow()
    with st.db.write() as s:
        batch = Batch(name="align")
        s.add(batch)
        s.flush()
        s.add(Task(batch_id=batch.id, command="bwa mem", status="pending"))
        r = Recruiter(batch_id=batch.id, provider="ovh", regions=["GRA11"], flavor="c3-8",
                      max_workers=4, tasks_per_worker=10, concurrency=4, budget=50.0)
        s.add(r)
        s.flush()
        for i, status in enumerate(["running", "deploying", "deleted"]):
            s.add(Instance(name=f"align-{i}", recruiter_id=r.id, batch_id=batch.id, provider="ovh",
                           region="GRA11", flavor="c3-8", hourly_cost=0.5, status=status,
                           ip=f"192.0.2.{i + 10}", created_at=now - timedelta(hours=2),
                           cost=1.0 if status == "deleted" else None,
                           deleted_at=now - timedelta(hours=1) if status == "deleted" else None))
        job = Job(kind="deploy", target="192.0.2.10", status="running", attempts=1,
                  params={"engine": "pyinfra"}, started_at=now)
        s.add(job)
        s.add(Job(kind="create", target="align-2", status="failed", attempts=3, error="quota exceeded"))
        s.flush()
        job_id = job.id
    size = st.job_logs.append(job_id, "log", 0, b"connecting to 192.0.2.10\n")

    page.goto(served + "/ui/recruiters")
    row = page.locator("#recruiters tbody tr").first
    ex(row).to_contain_text("align")
    ex(row).to_contain_text("c3-8")
    ex(row.locator("td").nth(5)).to_have_text("2/4")                  # live hosts / max
    ex(row.locator("td").nth(8)).to_have_text("1.000")                # 2 live hosts at 0.5/h
    ex(page.locator("#instances tbody tr")).to_have_count(2)          # live ones by default
    page.select_option("#f-status", "")
    ex(page.locator("#instances tbody tr")).to_have_count(3)
    ex(page.locator("#sum-hosts")).to_have_text("2")
    shots(page, "recruiters")

    page.goto(served + "/ui/jobs")
    page.bring_to_front()       # a page the browser deems hidden skips its polls (common.js poll)
    # Its rows come with the page's first poll; CI once saw none within 5 s at the suite's end.
    ex(page.locator("#jobs tbody tr")).to_have_count(2, timeout=15_000)
    ex(page.locator("#jobs tbody tr").nth(0)).to_contain_text("quota exceeded")
    page.get_by_role("button", name=f"Show the log of job {job_id}").click()
    ex(page.locator("#log")).to_have_text("connecting to 192.0.2.10\n")
    st.job_logs.append(job_id, "log", size, b"installing scitq\n")       # the log grows
    ex(page.locator("#log")).to_contain_text("installing scitq")
    shots(page, "jobs")

    page.set_viewport_size(PHONE)
    page.goto(served + "/ui/recruiters")
    ex(page.locator("#recruiters tbody tr")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shots(page, "phone-recruiters")


def test_the_rent_form_adds_a_recruiter_with_a_flavor_from_the_catalog(db_url, tmp_path, page,
                                                                       shots):
    """Provider, flavor (suggested from the catalog), region, count and concurrency make a
    recruiter for the batch; it shows on the recruiters page."""
    from scitq.server import create_app
    ex = expect()
    hosts = [{"name": "lab1", "address": "192.0.2.10", "region": "lab", "flavor": "big", "cpu": 32,
              "ram": 128, "disk": 2000, "cost": 1.5},
             {"name": "lab2", "address": "192.0.2.11", "region": "annex", "flavor": "big", "cpu": 32,
              "ram": 128, "disk": 2000, "cost": 1.2},
             {"name": "lab3", "address": "192.0.2.12", "region": "lab", "flavor": "small", "cpu": 4,
              "ram": 16, "disk": 100}]
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url,
                      "PROVIDERS": {"static": {"hosts": hosts}},
                      "PUBLIC_URL": "https://scitq.example:5000"})
    try:
        client = app.test_client()
        assert call(client, "POST", "/providers/static/refresh")["flavors"] == 3
        with serving(app) as url:
            page.goto(url + "/ui/workers")
            ex(page.locator("#r-provider")).to_have_value("static")
            ex(page.locator("#flavor-names option")).to_have_count(2)       # big, small
            page.get_by_label("Batch").fill("align")
            page.get_by_label("Flavor").fill("big")
            ex(page.locator("#flavor-info")).to_contain_text("32 CPU, 128 GiB RAM")
            ex(page.locator("#r-region option")).to_have_count(3)           # any, annex, lab
            page.get_by_label("Region").select_option("annex")
            page.get_by_label("Count (hosts at most)").fill("2")
            page.get_by_label("Concurrency").fill("4")
            page.get_by_role("button", name="Rent").click()
            ex(page.locator("#flash")).to_contain_text("recruiter 1 added to batch align")
            shots(page, "workers-rent")
            (r,) = call(client, "GET", "/recruiters")
            assert (r["batch"], r["provider"], r["flavor"], r["regions"], r["max_workers"],
                    r["concurrency"], r["tasks_per_worker"]) == ("align", "static", "big", ["annex"],
                                                                 2, 4, 4)
            page.get_by_label("Flavor").fill("huge")            # not in the catalog: said so
            ex(page.locator("#flavor-info")).to_contain_text("huge is not in the catalog")
            page.get_by_label("Batch").fill("no spaces")        # the API's 400 is shown
            page.get_by_role("button", name="Rent").click()
            ex(page.locator("#flash .error")).to_contain_text("invalid batch name")
            assert len(call(client, "GET", "/recruiters")) == 1

            page.goto(url + "/ui/recruiters")
            ex(page.locator("#recruiters tbody tr")).to_have_count(1)
            ex(page.locator("#recruiters tbody tr td").nth(4)).to_have_text("annex")
    finally:
        app.extensions["scitq"].db.dispose()
