"""Submissions are idempotent (issue 21): a chunk of tasks sent with a submission id is stored
once, however many times it comes, on SQLite and on PostgreSQL.

The acceptance: kill -9 of a real server while `Client.add_tasks` of 50,000 tasks is under
way, a restart on the same database, and the same call again store exactly 50,000 tasks.
"""
import http.server
import os
import signal
import threading
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from apicalls import call
from pgcluster import free_port
from procs import wait_until
from scitq.client import Client
from scitq.errors import Conflict, ServerUnreachable

N = 50_000


def bulk(client, tasks, submission, batch="sub", expect=201):
    return call(client, "POST", "/tasks/bulk", expect,
                json={"batch": batch, "tasks": tasks, "submission": submission})


def stored(client, batch="sub"):
    return call(client, "GET", f"/batches/{batch}")["counts"]["total"]


# --- in process: a chunk sent twice, the same id with other tasks ------------------------

def test_the_same_chunk_posted_twice_is_stored_once(client):
    tasks = [{"command": f"echo {i}"} for i in range(20)]
    first = bulk(client, tasks, "run-1:0")
    again = bulk(client, tasks, "run-1:0")       # its answer was lost: the client sends it again
    assert again == first and first["count"] == 20
    assert stored(client) == 20
    other = bulk(client, tasks, "run-1:1")       # another chunk of the same content is new
    assert other["ids"][0] > first["ids"][-1]
    assert stored(client) == 40


def test_the_same_submission_with_other_tasks_is_a_409(client):
    bulk(client, [{"command": "echo a"}], "run-2:0")
    refused = bulk(client, [{"command": "echo b"}], "run-2:0", expect=409)
    assert "submission 'run-2:0' was stored with other tasks" in refused["error"]
    assert "\n" not in refused["error"]
    bulk(client, [{"command": "echo a"}], "run-2:0", batch="elsewhere", expect=409)
    assert stored(client) == 1


@pytest.mark.parametrize("submission", ["", "x" * 256, "a\x00b", "a b", "\ud800", 7])
def test_a_bad_submission_id_is_a_400(client, submission):
    answer = bulk(client, [{"command": "true"}], submission, expect=400)
    assert answer["error"]


# --- a real server: a lost answer, kill -9 mid-submission ----------------------------------

class LosingProxy(http.server.ThreadingHTTPServer):
    """Forwards requests to the server, but drops the answer of the first bulk submission
    after the server has stored it: the connection closes with no answer."""

    daemon_threads = True

    def __init__(self, upstream):
        self.upstream = httpx.Client(base_url=upstream, timeout=60)
        self.lost = 0
        super().__init__(("127.0.0.1", 0), Forward)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class Forward(http.server.BaseHTTPRequestHandler):
    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        resp = self.server.upstream.request(self.command, self.path, content=body,
                                            headers={"Content-Type": "application/json"})
        if self.path.endswith("/tasks/bulk") and not self.server.lost:
            self.server.lost += 1
            self.close_connection = True
            return
        self.send_response(resp.status_code)
        for name in ("Content-Type", "Retry-After"):
            if name in resp.headers:
                self.send_header(name, resp.headers[name])
        self.send_header("Content-Length", str(len(resp.content)))
        self.end_headers()
        self.wfile.write(resp.content)

    do_GET = do_POST = _forward

    def log_message(self, *args):
        pass


def test_the_client_sends_a_chunk_whose_answer_was_lost_again_and_it_is_stored_once(live):
    proxy = LosingProxy(live.url)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        with Client(proxy.url) as c:
            c.retry_min = 0.05
            ids = c.add_tasks([{"command": f"echo {i}"} for i in range(30)], batch="lost", chunk=10)
        assert proxy.lost == 1
        assert len(ids) == 30 and ids == sorted(set(ids))
        assert live.batch("lost")["counts"]["total"] == 30
        assert [t["command"] for t in live.iter_tasks(batch="lost")] == [f"echo {i}" for i in range(30)]
    finally:
        proxy.shutdown()
        proxy.server_close()
        proxy.upstream.close()


def test_the_same_chunk_sent_by_several_at_once_is_stored_once(live):
    """A retry that overtakes its first try (whose answer timed out): one stores, the others
    wait for its commit and get its ids."""
    body = {"batch": "twins", "submission": "twins:0",
            "tasks": [{"command": f"echo {i}"} for i in range(3000)]}
    answers = []
    start = threading.Barrier(4)

    def post():
        with httpx.Client(base_url=live.url, timeout=60) as h:
            start.wait()
            answers.append(h.post("/api/v1/tasks/bulk", json=body))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert [a.status_code for a in answers] == [201] * 4, [a.text[:200] for a in answers]
    assert len({tuple(a.json()["ids"]) for a in answers}) == 1
    assert live.batch("twins")["counts"]["total"] == 3000


def count_tasks(engine):
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM task")).scalar()


def test_kill_9_of_the_server_mid_add_tasks_then_the_same_call_stores_exactly_50000(db_url, procs, tmp_path):
    port = free_port()
    server = procs.server(db_url, "--port", str(port))
    engine = create_engine(db_url)
    tasks = [{"command": f"echo {i}"} for i in range(N)]
    failed = []

    def first_call():
        with Client(server.url) as c:
            c.retries, c.retry_min = 1, 0.1
            try:
                c.add_tasks(tasks, batch="big", submission="run-50k")
            except ServerUnreachable as exc:
                failed.append(exc)

    try:
        submitting = threading.Thread(target=first_call)
        submitting.start()
        wait_until(lambda: count_tasks(engine) > 0, 60, 0.01, "the first chunk to be stored")
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        submitting.join(60)
        assert not submitting.is_alive() and failed, "the first call should have lost its server"
        before = count_tasks(engine)
        assert 0 < before < N, f"the kill came after every chunk ({before} stored)"

        (tmp_path / "server.log").rename(tmp_path / "server-killed.log")
        server = procs.server(db_url, "--port", str(port))
        with Client(server.url) as c:
            ids = c.add_tasks(tasks, batch="big", submission="run-50k")
            assert c.batch("big")["counts"]["total"] == N
        assert len(ids) == N and ids == sorted(set(ids))
        assert count_tasks(engine) == N
        with engine.connect() as conn:
            commands = dict(conn.execute(text("SELECT id, command FROM task")).all())
        assert [commands[i] for i in ids] == [t["command"] for t in tasks]

        with Client(server.url) as c:       # and once more: nothing new
            assert c.add_tasks(tasks, batch="big", submission="run-50k") == ids
            with pytest.raises(Conflict):
                c.add_tasks(tasks[::-1], batch="big", submission="run-50k")
        assert count_tasks(engine) == N
        print(f"[kill -9 mid add_tasks] {before} of {N} stored before the kill")
    finally:
        engine.dispose()


def test_task_add_from_a_file_with_a_submission_id_stores_once(live):
    from test_cli import assert_one_line_error, scitq
    first = scitq("task", "add", "-f", "-", "--batch", "cli", "--submission", "cli-1",
                  server=live.url, input="echo a\necho b\n")
    again = scitq("task", "add", "-f", "-", "--batch", "cli", "--submission", "cli-1",
                  server=live.url, input="echo a\necho b\n")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert again.stdout == first.stdout and len(first.stdout.split()) == 2
    assert live.batch("cli")["counts"]["total"] == 2
    other = scitq("task", "add", "-f", "-", "--batch", "cli", "--submission", "cli-1",
                  server=live.url, input="echo c\n")
    assert_one_line_error(other)
    assert "was stored with other tasks" in other.stderr
    assert_one_line_error(scitq("task", "add", "echo x", "--submission", "cli-2", server=live.url))
    assert live.batch("cli")["counts"]["total"] == 2
