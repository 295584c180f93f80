"""The `scitq` command as people type it: bad input gives one line and exit 2."""
import os
import socket
import subprocess
import sys

from procs import wait_for_url, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scitq(*args, server=None, env=None, input=None):
    argv = [sys.executable, "-m", "scitq.cli"] + (["--server", server] if server else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, input=input)


def assert_one_line_error(result, code=2):
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_input_exits_2_with_one_line_and_loses_nothing(live, tmp_path):
    url = live.url
    assert scitq("task", "add", "echo kept", "--batch", "keep", server=url).returncode == 0
    before = live.tasks(limit=1000)["items"]

    huge = tmp_path / "huge.txt"
    huge.write_text("x" * (10 * 1024 * 1024) + "\n")
    cases = [
        ("task", "add", "echo x", "--batch", "a/b"),
        ("task", "add"),
        ("task", "add", "-f", str(huge)),
        ("task", "show", "999999"),
        ("task", "show", "abc"),
        ("task", "output", "424242"),
        ("task", "relaunch", "999999"),
        ("task", "list", "--status", "bogus"),
        ("task", "list", "--batch", "no-such-batch"),
        ("batch", "show", "no-such-batch"),
        ("batch", "wait", "no-such-batch"),
        ("batch", "pause", "bad/name"),
        ("worker", "set", "nobody", "--concurrency", "2"),
        ("worker", "set", "nobody"),
        ("worker", "delete", "nobody"),
        ("no-such-command",),
    ]
    for args in cases:
        result = scitq(*args, server=url)
        assert_one_line_error(result)
        assert result.stdout == "", (args, result.stdout)     # no table, no bar: nothing
    assert live.tasks(limit=1000)["items"] == before


def test_unreachable_server_is_one_line_exit_1():
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert_one_line_error(scitq("batch", "list", server=f"http://127.0.0.1:{port}"), code=1)


def test_listings_as_json_and_tables(live, procs):
    procs.worker(live.url, "lister", 2)
    out = scitq("task", "add", "-f", "-", "--batch", "json", server=live.url, input="echo a\necho b\n")
    assert out.returncode == 0 and len(out.stdout.split()) == 2
    live.wait_batch("json", interval=0.2, timeout=60)
    import json
    tasks = json.loads(scitq("task", "list", "--batch", "json", "--json", server=live.url).stdout)
    assert [t["status"] for t in tasks] == ["succeeded", "succeeded"]
    batches = json.loads(scitq("batch", "list", "--json", server=live.url).stdout)
    assert batches[0]["counts"]["succeeded"] == 2
    workers = json.loads(scitq("worker", "list", "--json", server=live.url).stdout)
    assert workers[0]["name"] == "lister"
    table = scitq("batch", "list", server=live.url).stdout
    assert "json" in table and "remaining" in table
    wait = scitq("batch", "wait", "json", server=live.url)
    assert wait.returncode == 0 and "all 2 task(s) succeeded" in wait.stdout


def test_batch_wait_exits_nonzero_when_a_task_failed(live, procs):
    procs.worker(live.url, "w", 1)
    live.add_task("exit 1", batch="doomed")
    live.add_task("true", batch="doomed")
    result = scitq("batch", "wait", "doomed", "--interval", "0.2", server=live.url)
    assert result.returncode == 1
    assert "1 task(s) failed" in result.stderr


def test_a_batch_whose_tasks_all_ended_is_done_until_tasks_are_added(live, procs):
    import json
    procs.worker(live.url, "w", 1)
    live.add_task("true", batch="finished")
    live.wait_batch("finished", interval=0.2, timeout=60)

    def status():
        listed = json.loads(scitq("batch", "list", "--json", server=live.url).stdout)
        return {b["name"]: b["status"] for b in listed}["finished"]
    assert status() == "done"
    assert " done " in scitq("batch", "list", server=live.url).stdout
    sleeper = live.add_task("sleep 60", batch="finished")["id"]
    assert status() == "active"
    live.kill_task(sleeper)
    wait_until(lambda: status() == "done", 30, what="the batch done again")
    assert scitq("batch", "pause", "finished", server=live.url).stdout.strip() == \
        "batch finished: paused"                # paused is said over done: it holds what comes


def test_task_output_follows_a_running_task(live, procs):
    procs.worker(live.url, "w", 1)
    tid = live.add_task("for i in 1 2 3; do echo line $i; sleep 0.7; done")["id"]
    wait_until(lambda: live.task(tid)["status"] == "running", 30, what="task running")
    follow = scitq("task", "output", str(tid), "-f", server=live.url)
    assert follow.returncode == 0
    assert follow.stdout == "line 1\nline 2\nline 3\n"


def test_following_a_failed_task_shows_its_stderr_and_exits_1(live, procs):
    """Acceptance 6 (its `task output -f` half): the end of the task is said, and a failure is
    the command's exit status."""
    procs.worker(live.url, "w", 1)
    failed = live.add_task("echo out; echo oops >&2; exit 3")["id"]
    follow = scitq("task", "output", str(failed), "-f", server=live.url)
    assert follow.returncode == 1
    assert follow.stdout == "out\n"
    assert follow.stderr == f"oops\ntask {failed}: failed (exit code 3)\n"
    fine = live.add_task("echo fine")["id"]
    follow = scitq("task", "output", str(fine), "-f", server=live.url)
    assert (follow.returncode, follow.stdout) == (0, "fine\n")
    assert follow.stderr == f"task {fine}: succeeded (exit code 0)\n"


def fresh_home_env(home):
    """A user's environment with nothing of scitq's yet: no SCITQ_*, no XDG dirs, a new HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCITQ_", "XDG_"))}
    env["HOME"] = str(home)
    return env


def test_scitq_up_then_echo_hi(tmp_path, procs):
    """No config at all (a fresh HOME), `scitq up`, add a task, read `hi`: the CLI finds the
    server and its admin token through the default data dir, on whatever port it got.
    `scitq up` is the SQLite default by definition, so this one runs on SQLite only."""
    env = fresh_home_env(tmp_path / "home")
    up = procs.spawn(["up", "--concurrency", "2", "--port", "0"], "up.log", env=env)
    url = wait_for_url(up)
    assert url.startswith("http://127.0.0.1:")
    log = up.log_path.read_text()
    data_dir = tmp_path / "home" / ".local/share/scitq"
    assert f"{data_dir}/scitq.db" in log                              # the path is printed
    assert f"work folder {data_dir}/worker" in log

    added = scitq("task", "add", "echo hi", env=env)
    assert added.returncode == 0, added.stderr
    tid = added.stdout.strip()
    wait_until(lambda: scitq("task", "show", tid, "--json", env=env).stdout.count('"succeeded"') >= 2,
               30, what="echo hi to succeed")
    out = scitq("task", "output", tid, env=env)
    assert out.returncode == 0 and out.stdout == "hi\n"
    assert procs.stop(up) == 0
    assert not (data_dir / "server.json").exists()      # a stopped server is nobody's default


def test_every_command_has_a_help_line():
    """Walks the whole command tree: a command without help shows a blank in `scitq X -h`."""
    from scitq.cli import cli

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    commands = list(walk(cli, "scitq"))
    assert len(commands) > 60 and any(p == "scitq batch resume" for p, _ in commands)
    missing = [p for p, c in commands if not c.hidden and not (c.help or "").strip()]
    assert missing == []
    assert all(c.get_short_help_str() for _, c in commands if not c.hidden)


def test_shell_completion_works_as_the_readme_says():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert 'eval "$(_SCITQ_COMPLETE=bash_source scitq)"' in readme
    exe = os.path.join(os.path.dirname(sys.executable), "scitq")
    source = subprocess.run([exe], env={**os.environ, "_SCITQ_COMPLETE": "bash_source"},
                            capture_output=True, text=True, timeout=60)
    assert source.returncode == 0 and "complete -o nosort -F _scitq_completion scitq" in source.stdout
    done = subprocess.run([exe], env={**os.environ, "_SCITQ_COMPLETE": "bash_complete",
                                      "COMP_WORDS": "scitq batch re", "COMP_CWORD": "2"},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["plain,resume"]


def test_license_and_classifiers_say_what_is_true():
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    meta = cfg["metadata"]
    assert meta["license"] == "MIT"
    assert open(os.path.join(REPO, meta["license_files"])).readline().strip() == "MIT License"
    classifiers = meta["classifiers"].split("\n")
    running = f"Programming Language :: Python :: {sys.version_info.major}.{sys.version_info.minor}"
    assert running in classifiers                        # the Python this suite runs on
    assert "License :: OSI Approved :: MIT License" in classifiers


def test_worker_client_and_cli_import_nothing_of_the_server():
    """A worker host needs only the worker's few packages."""
    code = ("import sys, scitq.cli, scitq.worker, scitq.client; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('flask', 'flask_restx', 'sqlalchemy', 'alembic', 'gevent', 'psycopg') "
            "or m.startswith('scitq.server')); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_following_a_task_waits_for_it_to_start(live, procs):
    tid = live.add_task("echo late")["id"]
    follower = subprocess.Popen([sys.executable, "-m", "scitq.cli", "--server", live.url,
                                 "task", "output", str(tid), "-f"], stdout=subprocess.PIPE, text=True)
    try:
        procs.worker(live.url, "late", 1)
        out, _ = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 0 and out == "late\n"


def test_task_semantics_from_the_command_line(live, tmp_path):
    url = live.url
    root = scitq("task", "add", "exit 3", "--batch", "cli-dag", "--retries", "1", "--timeout", "30",
                 "--input", f"file://{tmp_path}/", server=url)
    assert root.returncode == 0, root.stderr
    root_id = int(root.stdout)
    child = scitq("task", "add", "echo child", "--batch", "cli-dag", "-d", str(root_id), "--json",
                  server=url)
    child_task = __import__("json").loads(child.stdout)
    assert child_task["status"] == "waiting"
    shown = scitq("task", "show", str(child_task["id"]), server=url)
    assert f"depends_on: {root_id}" in shown.stdout
    assert scitq("batch", "set", "cli-dag", "--concurrency", "2", server=url).stdout.strip() == \
        "batch cli-dag: concurrency 2"
    stop = scitq("batch", "stop", "cli-dag", "--requeue", server=url)
    assert stop.returncode == 0 and "paused" in stop.stdout
    killed = scitq("task", "kill", str(root_id), server=url)
    assert killed.stdout.strip() == f"task {root_id}: canceled (killed by user before it started)"
    assert live.task(child_task["id"])["status"] == "canceled"
    forced = scitq("task", "force", str(child_task["id"]), server=url)
    assert forced.stdout.startswith(f"task {child_task['id']}: pending")
    for args in [("task", "add", "x", "--retries", "-1"),
                 ("task", "add", "x", "--input", "ftp://nowhere/x"),
                 ("task", "add", "x", "--container-options", "-e A=1"),
                 ("task", "add", "x", "-d", "999999"),
                 ("task", "force", str(child_task["id"])),
                 ("task", "pause", str(child_task["id"])),
                 ("batch", "stop", "no-such-batch"),
                 ("worker", "drain", "nobody")]:
        assert_one_line_error(scitq(*args, server=url))
