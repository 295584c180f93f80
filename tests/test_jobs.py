"""Jobs: the runner's retry policy and the jobs API, on both databases. (Real deploys over
SSH are in test_deploy_*.py; here the runner is given handlers so its policy is exact.)"""
import threading
import time

import pytest
from sqlalchemy import select, update

from procs import wait_until
from scitq.errors import ScitqError
from scitq.server.jobs import JobRunner
from scitq.server.models import Job

API = "/api/v1"


def runner_for(app, handlers):
    st = app.extensions["scitq"]
    return JobRunner(st.db, st.job_logs, handlers, backoff=0.05)


def make_jobs(client, *hosts, **body):
    r = client.post(f"{API}/jobs/deploy", json={"hosts": list(hosts), "server_url": "http://s:5000", **body})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def finished(client, job_id):
    j = client.get(f"{API}/jobs/{job_id}").get_json()
    return j if j["status"] in ("succeeded", "failed") else None


def log_of(client, job_id):
    return client.get(f"{API}/jobs/{job_id}/log").data.decode()


def test_a_flaky_job_is_retried_until_it_succeeds(app, client):
    tries = []

    def flaky(job, log):
        tries.append(job["attempts"])
        log(f"trying {job['target']}")
        if len(tries) < 3:
            raise ScitqError(f"cannot reach {job['target']}:22 over SSH")

    (job,) = make_jobs(client, "h1", max_attempts=3)
    runner = runner_for(app, {"deploy": flaky})
    runner.start()
    try:
        done = wait_until(lambda: finished(client, job["id"]), 20, what="the job")
    finally:
        runner.stop()
    assert (done["status"], done["attempts"], tries) == ("succeeded", 3, [1, 2, 3])
    text = log_of(client, job["id"])
    assert text.count("cannot reach h1:22 over SSH") == 2 and text.count("trying h1") == 3
    assert "=== succeeded" in text


def test_a_job_fails_when_its_attempts_are_spent_and_can_be_retried(app, client):
    def broken(job, log):
        raise ScitqError("cannot reach h2:22 over SSH: Connection refused")

    (job,) = make_jobs(client, "h2", max_attempts=2)
    runner = runner_for(app, {"deploy": broken})
    runner.start()
    try:
        done = wait_until(lambda: finished(client, job["id"]), 20, what="the job")
        assert (done["status"], done["attempts"]) == ("failed", 2)
        assert "Connection refused" in done["error"] and "no attempt left" in log_of(client, job["id"])
        r = client.post(f"{API}/jobs/{job['id']}/retry")
        assert r.status_code == 200 and r.get_json()["status"] in ("pending", "running")
        done = wait_until(lambda: finished(client, job["id"]), 20, what="the retried job")
        assert (done["status"], done["attempts"]) == ("failed", 2)
        assert done["earlier_attempts"] == 2         # the first round stays in its history
    finally:
        runner.stop()
    assert client.post(f"{API}/jobs/{job['id']}/retry").status_code == 200
    assert client.post(f"{API}/jobs/{job['id']}/retry").status_code == 409   # pending now


def test_a_crash_in_a_handler_is_logged_not_fatal(app, client):
    (job,) = make_jobs(client, "h3", max_attempts=1)
    runner = runner_for(app, {"deploy": lambda job, log: 1 / 0})
    runner.start()
    try:
        done = wait_until(lambda: finished(client, job["id"]), 20, what="the job")
    finally:
        runner.stop()
    assert done["status"] == "failed" and "ZeroDivisionError" in done["error"]
    assert "Traceback" in log_of(client, job["id"])


def test_jobs_running_when_the_server_died_run_again(app, client):
    (job,) = make_jobs(client, "h4")
    st = app.extensions["scitq"]
    with st.db.write() as s:
        s.execute(update(Job).values(status="running", attempts=1))
    ran = []
    runner = runner_for(app, {"deploy": lambda job, log: ran.append(job["attempts"])})
    runner.start()
    try:
        done = wait_until(lambda: finished(client, job["id"]), 20, what="the job")
    finally:
        runner.stop()
    assert done["status"] == "succeeded" and ran == [2]


@pytest.mark.parametrize("body, message", [
    ({"hosts": ["-oProxyCommand=touch /tmp/pwned"]}, "invalid host"),
    ({"hosts": ["h; rm -rf /"]}, "invalid host"),
    ({"hosts": ["$(reboot)"]}, "invalid host"),
    ({"hosts": ["h"], "user": "root; id"}, "invalid SSH user"),
    ({"hosts": ["h"], "engine": "salt"}, "salt"),
    ({"hosts": []}, ""),
    ({"hosts": ["a", "b"], "name": "one"}, "one host only"),
])
def test_hostile_deploy_requests_are_refused(client, body, message):
    body.setdefault("server_url", "http://s:5000")
    r = client.post(f"{API}/jobs/deploy", json=body)
    assert r.status_code == 400 and message in str(r.get_json())
    assert client.get(f"{API}/jobs").get_json()["items"] == []


def test_deploy_needs_to_know_how_hosts_reach_the_server(client):
    r = client.post(f"{API}/jobs/deploy", json={"hosts": ["h"]})
    assert r.status_code == 400 and "--public-url" in r.get_json()["error"]


def test_job_listing_and_log_follow(app, client):
    jobs = make_jobs(client, "a1", "a2", "a3")
    listed = client.get(f"{API}/jobs?limit=2").get_json()
    assert [j["id"] for j in listed["items"]] == [jobs[2]["id"], jobs[1]["id"]]
    assert client.get(f"{API}/jobs?after={listed['next']}").get_json()["items"][0]["id"] == jobs[0]["id"]
    st = app.extensions["scitq"]
    runner = runner_for(app, {"deploy": lambda job, log: (log("one"), time.sleep(0.2), log("two"))})
    runner.line(jobs[0]["id"], "before")
    r = client.get(f"{API}/jobs/{jobs[0]['id']}/log?offset=3")
    assert r.data == b"ore\n" and r.headers["X-Scitq-Complete"] == "false"
    assert st.job_logs.size(jobs[0]["id"], "log") == 7
    assert client.get(f"{API}/jobs/999/log").status_code == 404


def test_the_deploy_engine_is_chosen_by_configuration(db_url, tmp_path):
    from scitq.server import create_app
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "DEPLOY_ENGINE": "ansible",
                      "PUBLIC_URL": "http://s:5000"})
    try:
        c = app.test_client()
        (by_config,) = c.post(f"{API}/jobs/deploy", json={"hosts": ["h1"]}).get_json()
        (by_request,) = c.post(f"{API}/jobs/deploy", json={"hosts": ["h2"], "engine": "pyinfra"}).get_json()
        (teardown,) = c.post(f"{API}/jobs/teardown", json={"hosts": ["h1"]}).get_json()
    finally:
        app.extensions["scitq"].db.dispose()
    assert by_config["params"]["engine"] == "ansible" and teardown["params"]["engine"] == "ansible"
    assert by_request["params"]["engine"] == "pyinfra"
    assert by_config["params"]["server_url"] == "http://s:5000"


def test_a_job_another_live_server_runs_is_left_alone_and_taken_back_once_it_is_gone(pg_db, tmp_path):
    """Two servers' runners on one PostgreSQL: while the first runs a job, the second, started
    meanwhile, leaves it running; once the first server's connections are gone (it died), the
    second runs it again."""
    from scitq.server.db import Database
    from scitq.server.outputs import OutputStore
    from sqlalchemy import text
    dbs = [Database(pg_db) for _ in range(2)]
    dbs[0].migrate()
    release, ran = threading.Event(), []

    def slow(job, log):
        ran.append("first")
        release.wait(30)

    a = JobRunner(dbs[0], OutputStore(tmp_path / "a", streams=("log",)), {"deploy": slow})
    b = JobRunner(dbs[1], OutputStore(tmp_path / "b", streams=("log",)),
                  {"deploy": lambda job, log: ran.append("second")})
    a.orphan_after = b.orphan_after = 0.0
    try:
        with dbs[0].write() as s:
            s.add(Job(kind="deploy", target="h1", params={}, status="pending"))
        a.start()
        wait_until(lambda: ran == ["first"], 20, what="the first runner's job")
        b.start()                                   # a second server starting
        assert b.take_back() == []
        with dbs[1].read() as s:
            assert s.scalar(select(Job.status)) == "running"
        # The first server dies: it claims nothing more, and PostgreSQL ends its sessions,
        # and their locks with them.
        a.stop()
        with dbs[1].write() as s:
            s.execute(text("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                           "AND pid <> pg_backend_pid()"))
        wait_until(lambda: "second" in ran, 20, what="the job run again by the second server")
    finally:
        release.set()
        a.stop()
        b.stop()
        for db in dbs:
            db.dispose()
