"""Trust boundaries (issue 21): a task is not its worker, a worker is not an admin, a cache
hit is never another command's. Real servers and workers on loopback, both databases."""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sqlalchemy import select

from apicalls import API, call_as, dispatch
from procs import wait_until
from scitq.client import Client
from scitq.server.models import Batch, Worker


def _env(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}, **extra}


def _admin(server, tmp_path):
    return (tmp_path / "data" / "admin.token").read_text().strip()


def _done(c, tid):
    wait_until(lambda: c.task(tid)["status"] in ("succeeded", "failed"), 60, what=f"task {tid}")
    return c.task(tid)


@pytest.mark.parametrize("how", ["SCITQ_TOKEN", "SCITQ_TOKEN_FILE"])
def test_a_task_reads_no_token_from_its_env_nor_its_workers(how, procs, tmp_path):
    """`env` in a task, and the worker's /proc/PID/environ read from the task, hold no token."""
    server = procs.server(f"sqlite:///{tmp_path / 'scitq.db'}", "--auth")
    with Client(server.url, token=_admin(server, tmp_path)) as c:
        token = c.create_token("node1", "worker")["token"]
        if how == "SCITQ_TOKEN_FILE":
            (tmp_path / "token").write_text(token + "\n")
            os.chmod(tmp_path / "token", 0o600)
            env = _env(SCITQ_TOKEN_FILE=str(tmp_path / "token"))
        else:
            env = _env(SCITQ_TOKEN=token)
        w = procs.spawn(["worker", server.url, "--name", "node1", "--workdir", str(tmp_path / "w")],
                        "worker-node1.log", env=env)
        tid = c.add_task(f"env; echo ---; tr '\\0' '\\n' < /proc/{w.pid}/environ; echo ---; "
                         f"tr '\\0' '\\n' < /proc/$PPID/environ")["id"]
        assert _done(c, tid)["status"] == "succeeded", c.output(tid)
        out = c.output(tid)[0].decode()
        assert out.count("---") == 2 and "PATH=" in out          # all three were read
        assert token not in out and token[6:20] not in out
        assert not re.search(r"^SCITQ_TOKEN", out.split("---")[0], re.M)   # /proc: its value zeroed
        procs.stop(w)


def test_a_token_file_that_cannot_be_read_is_one_line(procs, tmp_path):
    w = procs.spawn(["worker", "http://127.0.0.1:9", "--name", "n", "--workdir", str(tmp_path / "w")],
                    "worker.log", env=_env(SCITQ_TOKEN_FILE=str(tmp_path / "missing")))
    assert w.wait(30) == 2
    log = w.log_path.read_text()
    assert "SCITQ_TOKEN_FILE" in log and "Traceback" not in log


def test_secret_names_reach_no_task():
    from scitq.worker.credential import is_secret, take_token
    env = {"SCITQ_TOKEN": "scitq_x", "SCITQ_DB": "postgresql://u:p@h/db", "SCITQ_S3_SECRET_KEY": "k",
           "SCITQ_SERVER": "http://s", "SCITQ_BATCH": "b"}
    assert take_token(env) == "scitq_x"
    assert env == {"SCITQ_SERVER": "http://s", "SCITQ_BATCH": "b"}
    assert is_secret(b"SCITQ_TOKEN") and not is_secret("SCITQ_TASK_ID")


# --- a worker token reaches its own worker only ----------------------------------------

def call(client, method, path, token=None, expect=200, **kwargs):
    """call_as, and every refusal a JSON error of one message."""
    out = call_as(client, method, path, token, expect, **kwargs)
    if expect >= 400:
        assert isinstance(out, dict) and out["error"], out
    return out


def _worker_tokens(c, admin, *names):
    return {n: call(c, "POST", "/tokens", admin, 201, json={"name": n, "role": "worker"})["token"]
            for n in names}


def test_a_worker_token_takes_no_other_workers_name(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    tok = _worker_tokens(c, admin, "wa", "wb", "spare")
    wa = call(c, "POST", "/workers", tok["wa"], 201, json={"name": "wa"})["id"]
    call(c, "POST", "/workers", admin, 201, json={"name": "byadmin"})
    # Unbound, it may not take over a worker registered by someone else...
    call(c, "POST", "/workers", tok["spare"], 409, json={"name": "wa"})
    call(c, "POST", "/workers", tok["spare"], 409, json={"name": "byadmin"})
    # ... nor, once bound, register as another name.
    call(c, "POST", "/workers", tok["wa"], 403, json={"name": "byadmin"})
    call(c, "POST", "/workers", tok["wa"], 403, json={"name": "new"})
    assert call(c, "POST", "/workers", tok["wa"], 201, json={"name": "wa"})["id"] == wa   # a restart
    # The worker deleted, its token is dead: its name is free for no one holding it.
    call(c, "DELETE", "/workers/wa", admin)
    call(c, "POST", "/workers", tok["wa"], 401, json={"name": "wa"})
    # A token revoked: dead at once, on every call.
    wb = call(c, "POST", "/workers", tok["wb"], 201, json={"name": "wb"})["id"]
    call(c, "DELETE", "/tokens/wb", admin)
    call(c, "POST", f"/workers/{wb}/poll", tok["wb"], 401, json={"wait": 0})
    with secured.extensions["scitq"].db.read() as s:
        assert sorted(w.name for w in s.scalars(select(Worker))) == ["byadmin", "wb"]


def test_a_worker_token_creates_no_batch(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    tok = _worker_tokens(c, admin, "wa")
    call(c, "POST", "/workers", tok["wa"], 404, json={"name": "wa", "batch": "invented"})
    call(c, "POST", "/batches", tok["wa"], 403, json={"name": "other"})
    with secured.extensions["scitq"].db.read() as s:
        assert s.scalars(select(Batch.name)).all() == []
        assert s.scalars(select(Worker)).all() == []
    call(c, "POST", "/batches", admin, 201, json={"name": "real"})
    assert call(c, "POST", "/workers", tok["wa"], 201, json={"name": "wa", "batch": "real"})["batch"] == "real"
    call(c, "PUT", "/workers/wa", tok["wa"], 403, json={"batch": "invented"})


def _held(secured, c, token, wid):
    dispatch(secured)
    return call(c, "POST", f"/workers/{wid}/poll", token, json={"wait": 0})["assignments"]


def test_an_ended_execution_takes_no_more_output(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    tok = _worker_tokens(c, admin, "wa")
    wa = call(c, "POST", "/workers", tok["wa"], 201, json={"name": "wa"})["id"]
    tid = call(c, "POST", "/tasks", admin, 201, json={"command": "echo ok"})["id"]
    (a,) = _held(secured, c, tok["wa"], wa)
    e = a["execution_id"]
    call(c, "POST", f"/executions/{e}/output?stream=stdout&offset=0", tok["wa"], data=b"ok\n")
    done = call(c, "POST", f"/workers/{wa}/reports", tok["wa"],
                json={"reports": [{"execution_id": e, "status": "succeeded", "return_code": 0}]})
    assert done["acked"] == [e]
    call(c, "POST", f"/executions/{e}/output?stream=stdout&offset=3", tok["wa"], 409, data=b"forged\n")
    call(c, "POST", f"/executions/{e}/output?stream=stderr&offset=0", tok["wa"], 409, data=b"forged\n")
    late = call(c, "POST", f"/workers/{wa}/reports", tok["wa"], json={"reports": [
        {"execution_id": e, "status": "failed", "return_code": 1, "stderr": {"offset": 0, "data": "Zm9yZ2Vk"}}]})
    assert late["acked"] == [] and late["refused"][0]["status"] == 409
    assert call(c, "GET", f"/tasks/{tid}/output", admin).get_data() == b"ok\n"
    assert call(c, "GET", f"/tasks/{tid}/output?stream=stderr", admin).get_data() == b""
    assert call(c, "GET", f"/tasks/{tid}", admin)["status"] == "succeeded"


def test_cached_from_names_no_other_workers_execution(secured):
    """wb cannot read wa's output by saying its own execution reused wa's."""
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    tok = _worker_tokens(c, admin, "wa", "wb")
    wa = call(c, "POST", "/workers", tok["wa"], 201, json={"name": "wa"})["id"]
    call(c, "POST", "/tasks", admin, 201, json={"command": "cat secret"})
    (a,) = _held(secured, c, tok["wa"], wa)
    call(c, "POST", f"/workers/{wa}/reports", tok["wa"], json={"reports": [
        {"execution_id": a["execution_id"], "status": "succeeded", "return_code": 0,
         "stdout": {"offset": 0, "data": "c2VjcmV0Cg=="}}]})
    call(c, "PUT", "/workers/wa", admin, json={"status": "paused"})
    wb = call(c, "POST", "/workers", tok["wb"], 201, json={"name": "wb"})["id"]
    mine = call(c, "POST", "/tasks", admin, 201, json={"command": "echo mine", "use_cache": True})["id"]
    (b,) = _held(secured, c, tok["wb"], wb)
    answer = call(c, "POST", f"/workers/{wb}/reports", tok["wb"], json={"reports": [
        {"execution_id": b["execution_id"], "status": "succeeded", "return_code": 0,
         "cached_from": a["execution_id"]}]})
    assert answer["acked"] == [] and answer["refused"][0]["status"] == 403
    assert call(c, "GET", f"/executions/{b['execution_id']}/output", tok["wb"]).get_data() == b""
    assert call(c, "GET", f"/tasks/{mine}", admin)["status"] != "succeeded"


# --- the cache ----------------------------------------------------------------------

def test_a_worker_cannot_poison_the_cache(secured):
    """The issue's poisoning: a worker stores a result under the key another task's command
    would have, and that task then gets it as a cache hit. The server makes the key now, from
    what it stored; what a worker says about a key is ignored."""
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    tok = _worker_tokens(c, admin, "evil")
    wid = call(c, "POST", "/workers", tok["evil"], 201, json={"name": "evil"})["id"]
    forged = {"key": "ee" * 32, "inputs": [{"path": "reads.fq", "sha256": "11" * 32}]}

    call(c, "POST", "/tasks", admin, 201, json={"command": "echo poisoned", "use_cache": True})
    (a,) = _held(secured, c, tok["evil"], wid)
    assert call(c, "POST", f"/executions/{a['execution_id']}/cache", tok["evil"], json=forged)["hit"] is None
    call(c, "POST", f"/workers/{wid}/reports", tok["evil"], json={"reports": [
        {"execution_id": a["execution_id"], "status": "succeeded", "return_code": 0,
         "stdout": {"offset": 0, "data": "cG9pc29uZWQK"}}]})

    victim = call(c, "POST", "/tasks", admin, 201, json={"command": "sha256sum $INPUT/reads.fq",
                                                          "use_cache": True})["id"]
    (b,) = _held(secured, c, tok["evil"], wid)
    assert call(c, "POST", f"/executions/{b['execution_id']}/cache", tok["evil"], json=forged)["hit"] is None
    refused = call(c, "POST", f"/workers/{wid}/reports", tok["evil"], json={"reports": [
        {"execution_id": b["execution_id"], "status": "succeeded", "return_code": 0,
         "cached_from": a["execution_id"]}]})
    assert refused["refused"][0]["status"] == 403
    assert call(c, "GET", f"/tasks/{victim}/output", admin).get_data() == b""

    # The same command on the same input contents is a hit; other contents are not.
    same = call(c, "POST", "/tasks", admin, 201, json={"command": "echo poisoned", "use_cache": True})["id"]
    other = call(c, "POST", "/tasks", admin, 201, json={"command": "echo poisoned", "use_cache": True})["id"]
    call(c, "PUT", "/workers/evil", admin, json={"concurrency": 4})
    held = {x["task_id"]: x["execution_id"] for x in _held(secured, c, tok["evil"], wid)}
    hit = call(c, "POST", f"/executions/{held[same]}/cache", tok["evil"], json=forged)["hit"]
    assert hit["execution_id"] == a["execution_id"]
    changed = {"inputs": [{"path": "reads.fq", "sha256": "22" * 32}]}
    assert call(c, "POST", f"/executions/{held[other]}/cache", tok["evil"], json=changed)["hit"] is None


# --- files --------------------------------------------------------------------------

def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_and_its_files_are_the_servers_own(db_url, tmp_path):
    from scitq.server import create_app
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    app = create_app({"DATA_DIR": data, "DATABASE": db_url})
    try:
        c = app.test_client()
        st = app.extensions["scitq"]
        tid = c.post(API + "/tasks", json={"command": "echo x", "use_cache": True}).get_json()["id"]
        wid = c.post(API + "/workers", json={"name": "w"}).get_json()["id"]
        (a,) = _held(app, c, None, wid)
        e = a["execution_id"]
        assert c.post(API + f"/executions/{e}/output?stream=stdout&offset=0", data=b"x\n").status_code == 200
        c.post(API + f"/executions/{e}/cache", json={"inputs": []})
        c.post(API + f"/workers/{wid}/reports", json={"reports": [
            {"execution_id": e, "status": "succeeded", "return_code": 0}]})
        c.post(API + "/tasks", json={"command": "echo x", "use_cache": True})
        (b,) = _held(app, c, None, wid)
        assert c.post(API + f"/executions/{b['execution_id']}/cache", json={"inputs": []}).get_json()["hit"]
        c.post(API + f"/workers/{wid}/reports", json={"reports": [
            {"execution_id": b["execution_id"], "status": "succeeded", "return_code": 0, "cached_from": e}]})
        assert c.get(API + f"/executions/{b['execution_id']}/output").get_data() == b"x\n"
        st.job_logs.extend(1, "log", b"a job's line\n")
        assert _mode(data) == 0o700
        for stream_path in (st.outputs.path(e, "stdout"), st.outputs.path(b["execution_id"], "stdout"),
                            st.job_logs.path(1, "log")):
            assert _mode(stream_path) == 0o600, stream_path
        if db_url.startswith("sqlite"):
            db_file = Path(db_url.split("///", 1)[1])
            assert _mode(db_file) == 0o600
            assert all(_mode(p) == 0o600 for p in db_file.parent.glob(db_file.name + "-*"))   # -wal, -shm
        assert tid
    finally:
        app.extensions["scitq"].db.dispose()


def test_a_password_in_db_is_refused_on_the_command_line(tmp_path):
    env = _env()
    out = subprocess.run([sys.executable, "-m", "scitq.cli", "server", "--db", "postgresql://u:hunter2@127.0.0.1:9/x",
                          "--data-dir", str(tmp_path / "d"), "--port", "0"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "SCITQ_DB" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# --- the UI -----------------------------------------------------------------------------

def test_every_answer_says_no_inline_script_no_sniffing_no_framing(secured):
    c = secured.test_client()
    for path in ("/ui/", "/ui/login", "/ui/tasks", API + "/tasks", API + "/docs", "/nowhere",
                 "/ui/static/common.js"):
        r = c.get(path)
        csp = r.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert r.headers.get("X-Content-Type-Options") == "nosniff", path
        if path.startswith("/ui/") and not path.endswith(".js"):
            assert "unsafe-inline" not in csp.split("script-src", 1)[1].split(";")[0]
            assert not re.search(r"<script(?![^>]*\bsrc=)", r.get_data(as_text=True)), path
            assert not re.search(r"\son[a-z]+=", r.get_data(as_text=True)), path


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "/\r\n/x", "//evil.example",
                                    "/\\evil.example", "https://evil.example/", "/%09/evil.example"])
def test_login_next_stays_on_this_site(secured, target):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    r = c.post("/ui/login", data={"token": admin, "next": target})
    assert r.status_code == 302
    location = r.headers["Location"]
    cleaned = re.sub(r"[\t\r\n]", "", location)          # as a browser reads it
    assert cleaned.startswith("/") and cleaned[1:2] not in ("/", "\\"), location
    assert location == "/ui/" or target == "/%09/evil.example"
    assert c.get("/ui/login?next=" + target.replace("\n", "%0A").replace("\t", "%09")).status_code == 200


def test_the_ui_session_holds_no_token_and_dies_at_logout(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    user = call(c, "POST", "/tokens", admin, 201, json={"name": "alice", "role": "user"})["token"]
    r = c.post("/ui/login", data={"token": user, "next": "/ui/tasks"})
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    sid = re.match(r"scitq_session=([^;]+);", cookie).group(1)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert user not in cookie and user[6:20] not in sid
    page = c.get("/ui/tasks").get_data(as_text=True)
    assert user not in page
    csrf = re.search(r'<meta name="scitq-csrf" content="([^"]+)">', page).group(1)
    # The cookie reads; a change needs the page's CSRF token too (another site has not got it).
    assert c.get(API + "/tasks").status_code == 200
    r = c.post(API + "/tasks", json={"command": "echo csrf"})
    assert r.status_code == 403 and "CSRF" in r.get_json()["error"]
    assert c.post("/ui/api/batches/default/relaunch-failed").status_code == 403
    assert c.post(API + "/tasks", json={"command": "echo ok"}, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert c.post("/ui/logout").status_code == 403                  # no CSRF: not logged out
    assert c.post("/ui/logout", data={"csrf": csrf}).status_code == 302
    # The old cookie, replayed after logout, reaches nothing.
    c.set_cookie("scitq_session", sid)
    r = c.get(API + "/tasks")
    assert r.status_code == 401 and r.get_json()["error"]
    # A session dies with its token.
    c2 = secured.test_client()
    c2.post("/ui/login", data={"token": user})
    assert c2.get(API + "/tasks").status_code == 200
    call(c, "DELETE", "/tokens/alice", admin)
    assert c2.get(API + "/tasks").status_code == 401


def test_the_session_cookie_is_secure_under_tls(secured):
    c = secured.test_client()
    admin = secured.extensions["scitq"].new_admin_token
    r = c.post("/ui/login", data={"token": admin}, base_url="https://localhost")
    assert "Secure" in r.headers["Set-Cookie"]
