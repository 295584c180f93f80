"""Real `scitq` server and worker processes on loopback, for tests and benchmarks."""
import os
import re
import signal
import subprocess
import sys
import time

URL_LINE = re.compile(r"(?:scitq server on|scitq is up:) (https?://\S+)")


class Procs:
    """Starts `scitq` processes for a test and ends every one of them afterwards."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.started = []

    def spawn(self, args, log_name, env=None, cwd=None, script=False, preexec_fn=None,
              module="scitq.cli"):
        """`python -m scitq.cli ARGS` (or another module that runs the scitq command), or with
        script=True the `scitq` command itself (as a user types it: the current folder is not
        on its path)."""
        log = open(self.tmp / log_name, "wb")
        exe = [os.path.join(os.path.dirname(sys.executable), "scitq")] if script else \
            [sys.executable, "-m", module]
        proc = subprocess.Popen([*exe, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True, preexec_fn=preexec_fn)
        proc.log_path = self.tmp / log_name
        log.close()   # the child has its own copy
        self.started.append(proc)
        return proc

    def server(self, db_url, *args, command="server", env=None, data_dir=None, preexec_fn=None,
               module="scitq.cli"):
        """A server on a free port, returned once it listens (its URL as `.url`, its data dir
        as `.data_dir`)."""
        log = f"{command}-{data_dir.name}.log" if data_dir else f"{command}.log"
        data_dir = data_dir or self.tmp / "data"
        proc = self.spawn([command, "--db", db_url, "--data-dir", str(data_dir),
                           "--port", "0", *args], log, env=env, preexec_fn=preexec_fn,
                          module=module)
        proc.data_dir = data_dir
        proc.url = wait_for_url(proc)
        return proc

    def worker(self, url, name, concurrency=1, *args, env=None):
        """A worker process; `env` adds variables to this process's environment."""
        return self.spawn(["worker", url, "--name", name, "--concurrency", str(concurrency),
                           "--workdir", str(self.tmp / "work"), *args], f"worker-{name}.log",
                          env=dict(os.environ, **env) if env else None)

    def stop(self, proc, sig=signal.SIGTERM, timeout=20):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def cleanup(self):
        for proc in reversed(self.started):
            self.stop(proc, timeout=10)
            try:   # whatever the process group still holds (tasks of a killed worker)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for_url(proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = URL_LINE.search(proc.log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{proc.log_path.read_text(errors='replace')[-3000:]}")


def wait_until(predicate, timeout=60, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
