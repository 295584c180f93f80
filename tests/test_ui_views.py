"""The views of issue 20: per-minute rollups and the charts drawn from them (uPlot, in real
Chromium), the workflow example as one workflow of three steps on the dashboard, the tasks
list's worker, duration and end, the workers page's counts and current tasks, and a failed
task's page opening on the stream that holds its error."""
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from procs import wait_until
from scitq.server import task_store, rollups
from scitq.server.models import Execution, MinuteRollup, Task, Worker, utcnow
from test_ui import auth_app, batch_row, expect, serving, worker_row  # noqa: F401  (auth_app: a fixture)
from ui_browser import browser, page, shots  # noqa: F401  (fixtures)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mapreduce.py"


def backdate(app, batch, per_minute, minutes=3, worker="w1"):
    """A batch whose tasks ended over the last `minutes` minutes, `per_minute` each minute
    (its first task of each minute failed): rows written as the reports would have left them,
    with their times moved back. Returns (batch id, worker id)."""
    db = app.extensions["scitq"].db
    now = utcnow()
    with db.write() as s:
        ids = task_store.create_tasks(s, [{"command": "true"} for _ in range(per_minute * minutes)],
                                 batch_name=batch)
        w = s.scalar(select(Worker).where(Worker.name == worker))
        if w is None:
            w = Worker(name=worker, concurrency=4)
            s.add(w)
            s.flush()
        for i, task in enumerate(s.scalars(select(Task).where(Task.id.in_(ids)).order_by(Task.id))):
            at = now - timedelta(minutes=minutes - i // per_minute, seconds=-1)
            status = "failed" if i % per_minute == 0 else "succeeded"
            s.add(Execution(task_id=task.id, worker_id=w.id, worker_name=w.name, status=status,
                            assigned_at=at, started_at=at - timedelta(seconds=5), ended_at=at))
            task.status, task.attempt = status, 1
        return task.batch_id, w.id


def test_rollups_count_what_ended_per_minute_and_sample_the_slots(app, client):
    batch_id, worker_id = backdate(app, "three", per_minute=4)
    roller = app.extensions["scitq"].rollups
    roller.roll()
    data = client.get("/ui/api/charts?batch=three").get_json()
    assert len(data["minutes"]) == 3
    assert [b - a for a, b in zip(data["minutes"], data["minutes"][1:])] == [60, 60]
    assert data["succeeded"] == [3, 3, 3] and data["failed"] == [1, 1, 1]
    overall = client.get("/ui/api/charts").get_json()
    assert overall["succeeded"][:3] == [3, 3, 3]
    assert overall["busy"][-1] == 0 and overall["free"][-1] == 4   # the sample of this minute
    # Passes are idempotent, and one that comes later counts again what ended lately.
    roller.roll()
    assert client.get("/ui/api/charts?batch=three").get_json()["succeeded"] == [3, 3, 3]
    db = app.extensions["scitq"].db
    with db.write() as s:
        (tid,) = task_store.create_tasks(s, [{"command": "true"}], batch_name="three")
        s.add(Execution(task_id=tid, worker_id=worker_id, worker_name="w1", status="succeeded",
                        ended_at=utcnow()))
    roller.roll()
    data = client.get("/ui/api/charts?batch=three").get_json()
    assert sum(data["succeeded"]) == 10 and sum(data["failed"]) == 3
    activity = client.get(f"/ui/api/worker-activity?ids={worker_id}").get_json()
    assert activity == {str(worker_id): {"succeeded": 10, "failed": 3, "current": []}}
    with db.read() as s:
        assert s.scalar(select(MinuteRollup.busy).where(MinuteRollup.batch_id == rollups.ALL)
                        .order_by(MinuteRollup.minute.desc()).limit(1)) == 0
    assert client.get("/ui/api/charts?batch=nope").status_code == 404
    for bad in ("/ui/api/charts?minutes=0", "/ui/api/charts?minutes=x",
                "/ui/api/task-runs?ids=1,x", "/ui/api/worker-activity?ids=-1"):
        r = client.get(bad)
        assert r.status_code == 400 and r.get_json()["error"], bad


def test_task_runs_give_each_task_its_latest_attempt(app, client):
    backdate(app, "runs", per_minute=2, minutes=1)
    with app.extensions["scitq"].db.read() as s:
        ids = list(s.scalars(select(Task.id).order_by(Task.id)))
    runs = client.get("/ui/api/task-runs?ids=" + ",".join(map(str, ids))).get_json()
    assert set(runs) == {str(i) for i in ids}
    for run in runs.values():
        assert run["worker"] == "w1" and run["executions"] == 1
        assert run["started_at"] < run["ended_at"]


def test_the_charts_draw_a_batch_that_ran_three_minutes(app, page, shots):
    """Playwright reads the points uPlot draws: three minutes, three points per series."""
    ex = expect()
    backdate(app, "charted", per_minute=5)
    app.extensions["scitq"].rollups.roll()
    with serving(app) as url:
        page.goto(url + "/ui/")
        ex(page.locator("#chart-batch option[value=charted]")).to_have_count(1)
        page.select_option("#chart-batch", "charted")
        ex(page.locator("#charts")).to_have_attribute("data-batch", "charted")
        ex(page.locator("#chart-tasks")).to_have_attribute("data-points", "3")
        data = page.evaluate("document.getElementById('chart-tasks').uplot.data")
        assert len(data) == 3 and all(len(series) == 3 for series in data)
        assert data[1] == [4, 4, 4] and data[2] == [1, 1, 1]          # succeeded, failed
        assert page.locator("#chart-tasks canvas").count() == 1
        for other in ("chart-slots", "chart-cost"):
            assert page.evaluate(f"document.getElementById('{other}').uplot.data[0].length") == 3
        shots(page, "charts")
        # Times: "3m ago" today, the date and time for an older one.
        recent, same_day = page.evaluate("""() => {
            const d = new Date(Date.now() - 180e3);
            return [scitq.ago(d.toISOString()), d.toDateString() === new Date().toDateString()];
        }""")
        assert recent == "3m00s ago" or not same_day, recent      # (just after midnight: a date)
        older = page.evaluate("scitq.ago(new Date(Date.now() - 3 * 86400e3).toISOString())")
        assert "ago" not in older and re.search(r"\d{4}", older), older


@pytest.fixture
def workflow_run(live, procs, tmp_path):
    """The workflow example (map, combine, reduce over 3 files) run to its end on a real
    server and worker, and a task that fails with its error on stderr."""
    procs.worker(live.url, "w1", 3)
    wait_until(lambda: live.workers(), 30, what="worker registration")
    run = subprocess.run([sys.executable, str(EXAMPLE), "--server", live.url, "--workdir",
                          str(tmp_path / "mr"), "--files", "3", "--no-progress"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    (failing,) = live.add_tasks([{"command": "echo fine; echo 'broken pipe here' >&2; exit 3",
                                  "name": "bad"}], batch="lone")
    wait_until(lambda: live.task(failing)["status"] == "failed", 60, what="the failure")
    return live, failing


def test_the_workflow_example_is_one_workflow_of_three_steps(workflow_run, page, shots):
    ex = expect()
    live, failing = workflow_run
    page.goto(live.url + "/ui/")
    wf = page.locator("#batches tr.workflow")
    ex(wf).to_have_count(1)
    ex(wf.get_by_role("rowheader")).to_have_text("mapreduce (workflow, 3 steps)")
    chips = wf.locator(".step-chip")
    ex(chips).to_have_count(3)
    assert [c.get_attribute("data-step") for c in chips.all()] == ["map", "combine", "reduce"]
    ex(chips.nth(1)).to_contain_text("after map")
    ex(chips.nth(2)).to_contain_text("after combine")
    for chip, n in zip(chips.all(), (3, 3, 1)):
        ex(chip).to_contain_text(f"{n}/{n}")
    # The steps' batches follow their workflow's row; the lone batch is not in it.
    ex(page.locator("#batches tr.step[data-workflow=mapreduce]")).to_have_count(3)
    for step in ("map", "combine", "reduce"):
        ex(batch_row(page, f"mapreduce.{step}")).to_have_attribute("data-workflow", "mapreduce")
    ex(batch_row(page, "lone")).not_to_have_attribute("data-workflow", "mapreduce")
    shots(page, "workflow")

    # The tasks list: worker, duration and end of each task's latest attempt.
    page.goto(live.url + "/ui/tasks?batch=mapreduce.map")
    rows = page.locator("#tasks tbody tr")
    ex(rows).to_have_count(3)
    ex(rows.first.locator("td").nth(5)).to_have_text("w1")
    ex(rows.first.locator("td").nth(6)).to_have_text(re.compile(r"^\d+s$"))     # seconds
    ex(rows.first.locator("td").nth(7)).to_have_text(re.compile(r"\d+:\d\d"))  # a time
    shots(page, "tasks-columns")

    # The workers page: tasks ended by the worker (from the rollups, every 10 s), and what it
    # runs now (nothing, after the run).
    page.goto(live.url + "/ui/workers")
    w1 = worker_row(page, "w1")
    ex(w1.locator("[data-col=succeeded]")).to_have_text("7", timeout=30_000)
    ex(w1.locator("[data-col=failed]")).to_have_text("1")
    ex(w1.locator("[data-col=current]")).to_have_text("–")

    # A failed task opens on stderr, where its error is.
    page.goto(live.url + f"/ui/tasks/{failing}")
    ex(page.locator("#status")).to_have_text("failed")
    ex(page.locator("#stream")).to_have_value("stderr")
    ex(page.locator("#output")).to_contain_text("broken pipe here")
    shots(page, "failed-task")


def test_a_deleted_batch_takes_its_rollups_along(app, client):
    batch_id, worker_id = backdate(app, "gone", per_minute=2, minutes=2)
    app.extensions["scitq"].rollups.roll()
    assert sum(client.get("/ui/api/charts?batch=gone").get_json()["succeeded"]) == 2
    assert client.delete("/api/v1/batches/gone").status_code == 200
    with app.extensions["scitq"].db.read() as s:
        assert s.scalar(select(MinuteRollup.batch_id).where(MinuteRollup.batch_id == batch_id)) is None
    assert client.get(f"/ui/api/worker-activity?ids={worker_id}").get_json()[str(worker_id)]["succeeded"] == 0


def test_with_auth_on_the_new_ui_json_needs_a_user_token(auth_app):
    client = auth_app.test_client()
    for path in ("/ui/api/charts", "/ui/api/task-runs?ids=1", "/ui/api/worker-activity?ids=1"):
        assert client.get(path).status_code == 401, path
        worker = client.get(path, headers={"Authorization": f"Bearer {auth_app.worker_token}"})
        assert worker.status_code == 403, path
        user = client.get(path, headers={"Authorization": f"Bearer {auth_app.user_token}"})
        assert user.status_code == 200, path
