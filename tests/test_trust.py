"""Trust boundaries (issue 21): a task is not its worker, a worker is not an admin, a cache
hit is never another command's. Real servers and workers on loopback, both databases."""
import os
import re

import pytest

from procs import wait_until
from scitq.client import Client


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
