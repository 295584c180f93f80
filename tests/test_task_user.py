"""Tasks run as another user (`--task-user`, issue 21): a worker run as root starts each task
as a throwaway user this test makes, and the task cannot read the worker's token file, its
settings file or /proc/<worker pid>/environ. Real server and worker processes on loopback."""
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from procs import wait_until
from scitq.client import Client
from scitq.worker import taskuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                                reason="needs root and useradd to make a user for the tasks")


@pytest.fixture
def throwaway_user():
    """A system user made for this test (its home: a path that does not exist), deleted after."""
    name = f"scitqt{secrets.token_hex(4)}"
    home = f"/nonexistent-{name}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", home,
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield taskuser.resolve(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def open_dir():
    """A directory every user can go through (pytest's tmp_path is root's alone, which would
    hide the token by its parent, not by the token file's own mode)."""
    path = Path(tempfile.mkdtemp(prefix="scitq-task-user-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _env(**extra):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}, **extra}


def _start_worker(procs, how, url, args, env):
    """The worker as deployed hosts run it (python -m scitq.worker) or as a user types it."""
    if how == "module":
        log = procs.tmp / "worker-module.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "scitq.worker", url, *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        proc.log_path = log
        procs.started.append(proc)
        return proc
    return procs.spawn(["worker", url, *args], "worker-cli.log", env=env)


def _done(c, tid):
    wait_until(lambda: c.task(tid)["status"] in ("succeeded", "failed"), 60, what=f"task {tid}")
    return c.task(tid)


@pytest.mark.parametrize("how", ["module", "cli"])
def test_a_task_of_the_task_user_reads_nothing_of_its_worker(how, procs, tmp_path, throwaway_user, open_dir):
    user = throwaway_user
    server = procs.server(f"sqlite:///{tmp_path / 'scitq.db'}", "--auth")
    admin = (tmp_path / "data" / "admin.token").read_text().strip()
    with Client(server.url, token=admin) as c:
        token = c.create_token("node1", "worker")["token"]
        token_file, settings = open_dir / "token", open_dir / "worker.env"
        token_file.write_text(token + "\n")
        settings.write_text(f"SCITQ_TOKEN='{token}'\n")       # as the deploys write it
        for path in (token_file, settings):
            path.chmod(0o600)
        w = _start_worker(procs, how, server.url,
                          ["--name", "node1", "--workdir", str(open_dir / "work"), "--task-user", user.name],
                          _env(SCITQ_TOKEN_FILE=str(token_file)))
        script = (f"id -u; id -g; id -G; echo HOME=$HOME; stat -c %u $INPUT $OUTPUT $TEMP $PWD; echo ---; "
                  f"cat {token_file}; cat {settings}; cat /proc/{w.pid}/environ; echo ---; env; "
                  f"echo made > $OUTPUT/made")
        tid = c.add_task(script, output=f"file://{open_dir}/out/")["id"]
        task = _done(c, tid)
        out, err = (c.output(tid, stream)[0].decode() for stream in ("stdout", "stderr"))
        assert task["status"] == "succeeded", (out, err)
        ids, files, env = out.split("---\n")
        lines = ids.splitlines()
        assert lines[:3] == [str(user.uid), str(user.gid), str(user.gid)]      # no group of root's
        assert lines[3] == f"HOME={user.home}"
        assert lines[4:] == [str(user.uid)] * 4              # its directories are its own
        assert files == ""                                    # all three refused...
        for path in (token_file, settings, f"/proc/{w.pid}/environ"):
            assert f"{path}: Permission denied" in err        # ...by the kernel
        assert token not in out and token not in err and "SCITQ_TOKEN" not in env
        assert (open_dir / "out" / "made").read_text() == "made\n"    # the root worker uploads it

        # A link in $OUTPUT to the token: the worker (root) could read it, the task's user not.
        tid = c.add_task(f"ln -s {token_file} $OUTPUT/leak", output=f"file://{open_dir}/leak/")["id"]
        task = _done(c, tid)
        (ex,) = task["executions"]
        assert (task["status"], ex["reason"]) == ("failed", "upload") and "the task's user cannot read" in ex["error"]
        assert not (open_dir / "leak" / "leak").exists()
        procs.stop(w)
    assert token not in w.log_path.read_text()


def test_a_task_user_that_cannot_be_is_refused_in_one_line(procs, tmp_path, throwaway_user, open_dir):
    def refusal(*args):
        proc = subprocess.run([sys.executable, "-m", "scitq.worker", "http://127.0.0.1:9", "--name", "n", *args],
                              env=_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", proc
        assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
        return proc.stderr

    missing = f"scitqt{secrets.token_hex(4)}"
    assert f"--task-user {missing}: no such user" in refusal("--task-user", missing,
                                                             "--workdir", str(open_dir / "w"))
    assert "--task-user root: is root" in refusal("--task-user", "root", "--workdir", str(open_dir / "w"))
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)        # root's alone: the task user could not reach its directories there
    assert f"cannot go through {closed} to the work dir" in refusal(
        "--task-user", throwaway_user.name, "--workdir", str(closed / "w"))
    cli = procs.spawn(["worker", "http://127.0.0.1:9", "--task-user", missing], "cli.log", env=_env())
    assert cli.wait(60) == 2
    assert cli.log_path.read_text().splitlines() == [f"error: --task-user {missing}: no such user on this host"]

    # A worker that is not root: the same user is no change; another is refused.
    me = throwaway_user
    os.setegid(me.gid)
    os.seteuid(me.uid)
    try:
        assert taskuser.resolve(me.name) is None
        with pytest.raises(ValueError, match=rf"^--task-user root: the worker runs as uid {me.uid}, not root"):
            taskuser.resolve("root")
    finally:
        os.seteuid(0)
        os.setegid(0)
