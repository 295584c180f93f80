"""Tokens with roles, on both databases: no token is a 401, a worker's token on another
worker's work is a 403, and nothing changes either way; tokens are kept hashed and never
shown again, nor logged."""
import hashlib
import subprocess
import sys

from sqlalchemy import select

from apicalls import API, call_as as call, dispatch
from procs import wait_until
from scitq.client import Client
from scitq.server.models import Execution, Task, Token


def rows(app, model):
    with app.extensions["scitq"].db.read() as s:
        return s.scalars(select(model)).all()


def test_without_a_token_nothing_is_read_or_changed(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    assert admin and (secured.extensions["scitq"].data_dir / "admin.token").read_text().strip() == admin
    call(c, "POST", "/tasks", admin, 201, json={"command": "echo kept"})
    for method, path, body in [("GET", "/tasks", None), ("POST", "/tasks", {"command": "x"}),
                               ("POST", "/tasks/bulk", {"tasks": [{"command": "x"}]}),
                               ("DELETE", "/tasks/1", None), ("POST", "/workers", {"name": "w"}),
                               ("GET", "/batches", None), ("POST", "/tokens", {"name": "x", "role": "admin"})]:
        for token in (None, "scitq_" + "x" * 43, "not-even-a-token"):
            body_out = call(c, method, path, token, 401, json=body)
            assert body_out["error"]
    assert [t.command for t in rows(secured, Task)] == ["echo kept"]
    assert call(c, "GET", "/swagger.json")["swagger"] == "2.0"     # the API description is open


def test_roles_reach_what_they_should(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    user = call(c, "POST", "/tokens", admin, 201, json={"name": "alice", "role": "user"})["token"]
    call(c, "POST", "/tasks", user, 201, json={"command": "echo user"})
    call(c, "GET", "/tasks", user)
    call(c, "POST", "/tokens", user, 403, json={"name": "eve", "role": "admin"})
    call(c, "GET", "/tokens", user, 403)
    call(c, "POST", "/jobs/deploy", user, 403, json={"hosts": ["10.0.0.1"]})
    listed = call(c, "GET", "/tokens", admin)
    assert {t["name"] for t in listed} == {"admin", "alice"}
    assert all("token" not in t and "hash" not in t for t in listed)

    # Only hashes are kept.
    for row in rows(secured, Token):
        assert len(row.hash) == 64 and row.hash != row.prefix
    assert hashlib.sha256(user.encode()).hexdigest() in {r.hash for r in rows(secured, Token)}

    call(c, "DELETE", "/tokens/alice", admin)
    call(c, "GET", "/tasks", user, 401)


def test_a_worker_token_reaches_only_its_own_worker(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    tok = {n: call(c, "POST", "/tokens", admin, 201, json={"name": n, "role": "worker"})["token"]
           for n in ("wa", "wb")}
    wa = call(c, "POST", "/workers", tok["wa"], 201, json={"name": "wa", "concurrency": 1})["id"]
    wb = call(c, "POST", "/workers", tok["wb"], 201, json={"name": "wb", "concurrency": 1})["id"]
    call(c, "POST", "/workers", tok["wb"], 403, json={"name": "wa"})        # not its worker
    call(c, "POST", "/tasks/bulk", admin, 201, json={"tasks": [{"command": "a"}, {"command": "b"}]})
    dispatch(secured)
    (ea,) = call(c, "POST", f"/workers/{wa}/poll", tok["wa"], json={"wait": 0})["assignments"]
    (eb,) = call(c, "POST", f"/workers/{wb}/poll", tok["wb"], json={"wait": 0})["assignments"]
    a = ea["execution_id"]

    call(c, "POST", f"/workers/{wa}/poll", tok["wb"], 403, json={"wait": 0})
    call(c, "POST", f"/workers/{wa}/reports", tok["wb"], 403,
         json={"reports": [{"execution_id": a, "status": "running"}]})
    call(c, "POST", f"/executions/{a}/output?stream=stdout&offset=0", tok["wb"], 403, data=b"forged")
    call(c, "GET", f"/executions/{a}/output", tok["wb"], 403)
    # Through its own worker's reports: refused one by one, 403.
    answer = call(c, "POST", f"/workers/{wb}/reports", tok["wb"],
                  json={"reports": [{"execution_id": a, "status": "succeeded", "return_code": 0}]})
    assert answer["acked"] == [] and answer["refused"][0]["status"] == 403
    call(c, "GET", "/tasks", tok["wa"], 403)
    call(c, "GET", "/batches", tok["wa"], 403)
    call(c, "DELETE", f"/workers/{wa}", tok["wa"], 403)

    with secured.extensions["scitq"].db.read() as s:
        ex = s.get(Execution, a)
        assert ex.status == "assigned" and ex.stdout_bytes == 0
    assert secured.extensions["scitq"].outputs.size(a, "stdout") == 0

    # Its own work goes through.
    call(c, "POST", f"/executions/{a}/output?stream=stdout&offset=0", tok["wa"], data=b"mine\n")
    answer = call(c, "POST", f"/workers/{wa}/reports", tok["wa"],
                  json={"reports": [{"execution_id": a, "status": "succeeded", "return_code": 0}]})
    assert answer["acked"] == [a]
    assert call(c, "GET", f"/tasks/{ea['task_id']}/output", admin).get_data() == b"mine\n"


def test_tokens_stay_out_of_job_logs():
    from scitq.log import redact
    token = "scitq_" + "A1b2" * 11
    assert token not in redact(f"SCITQ_TOKEN={token} in a line")
    assert "scitq_A1b2" in redact(token)          # enough to tell which, not to use it


def test_real_processes_with_auth(db_url, procs, tmp_path):
    server = procs.server(db_url, "--auth")
    admin = (tmp_path / "data" / "admin.token").read_text().strip()
    assert admin not in server.log_path.read_text()
    with Client(server.url, token=admin) as c:
        worker_token = c.create_token("node1", "worker")["token"]
        w = procs.spawn(["worker", server.url, "--name", "node1", "--workdir", str(tmp_path / "w")],
                        "worker-node1.log", env={**_env(), "SCITQ_TOKEN": worker_token})
        tid = c.add_task("echo secured")["id"]
        wait_until(lambda: c.task(tid)["status"] == "succeeded", 30, what="the task")
        assert c.output(tid)[0] == b"secured\n"
        # A worker without a token is turned away with one clear line, and no traceback.
        bad = procs.spawn(["worker", server.url, "--name", "intruder", "--workdir", str(tmp_path / "x")],
                          "worker-intruder.log", env=_env())
        assert bad.wait(30) != 0
        log = bad.log_path.read_text()
        assert "needs a token" in log and "Traceback" not in log
        assert [x["name"] for x in c.workers()] == ["node1"]
        procs.stop(w)
    cli = subprocess.run([sys.executable, "-m", "scitq.cli", "--server", server.url, "task", "list"],
                         capture_output=True, text=True, env=_env(), timeout=60)
    assert cli.returncode == 2 and cli.stderr.startswith("error: this server needs a token")


def test_serving_every_address_without_auth_is_refused(tmp_path):
    out = subprocess.run([sys.executable, "-m", "scitq.cli", "server", "--host", "0.0.0.0",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: refusing to serve 0.0.0.0 without auth")
    assert len(out.stderr.strip().splitlines()) == 1


def test_the_url_printed_for_every_address_is_one_to_open(procs, tmp_path):
    """Listening on 0.0.0.0 the server names an address of this host, which answers (over TLS,
    with a certificate of the server's own CA that names that address)."""
    import httpx

    from scitq.trust import client_context
    server = procs.server(f"sqlite:///{tmp_path}/db.sqlite", "--host", "0.0.0.0", "--auth")
    host = httpx.URL(server.url).host
    assert host not in ("0.0.0.0", "") and server.url.startswith("https://")
    verify = client_context(str(tmp_path / "data" / "tls" / "ca.pem"))
    assert httpx.get(server.url + "/api/v1/swagger.json", timeout=30, verify=verify).status_code == 200


def _env():
    import os
    return {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}
