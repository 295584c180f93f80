"""`scitq up`'s own worker: a child process that dies with `up` and is started again when it dies.

It dies with `up` through a pipe: `up` holds the write end, the worker watches the read end
(`--parent-fd`) and exits when it reads EOF, which the kernel gives even when `up` is
SIGKILLed. (PR_SET_PDEATHSIG would do it on Linux alone, and fires when the thread that
forked exits, not the process.)
"""
import os
import re
import subprocess
import sys
import threading
import time

import click


class LocalWorker:
    """Runs `argv` (a `scitq worker` command line) until stop(); restarts it with back-off."""

    max_deaths = 5        # deaths in a row, each soon after its start, before giving up
    steady = 60.0         # seconds: a worker that ran this long had not failed to start
    first_delay = 0.5     # seconds before the first restart, doubled for each further one
    max_delay = 30.0

    def __init__(self, argv, env, on_give_up):
        self.argv, self.env, self.on_give_up = argv, env, on_give_up
        self._read_end, self._write_end = os.pipe()   # neither inherited by other children
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.proc = None
        self.starts = 0
        self.last_error = None
        self._thread = threading.Thread(target=self._supervise, name="scitq-local-worker",
                                        daemon=True)

    def start(self):
        self._thread.start()

    def _spawn(self):
        # -P: the current folder is not put on sys.path, so a `scitq/` folder there cannot
        # stand for the package. A session of its own: Ctrl-C reaches `up` alone, which
        # drains the worker once.
        return subprocess.Popen(
            [sys.executable, "-P", "-m", "scitq.cli", *self.argv, "--parent-fd", str(self._read_end)],
            env=self.env, pass_fds=(self._read_end,), stderr=subprocess.PIPE,
            start_new_session=True)

    def _supervise(self):
        deaths = 0
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._spawn()
                self.starts += 1
            started = time.monotonic()
            last = _relay(self.proc.stderr)
            rc = self.proc.wait()
            if self._stopping.is_set():
                return
            self.last_error = last or _exit_text(rc)
            deaths = deaths + 1 if time.monotonic() - started < self.steady else 1
            if deaths >= self.max_deaths:
                self.on_give_up(f"the local worker died {deaths} times in a row; its last "
                                f"error: {self.last_error}")
                return
            delay = min(self.first_delay * 2 ** (deaths - 1), self.max_delay)
            said = f"; last error: {last}" if last else ""
            click.echo(f"scitq up: the local worker exited ({_exit_text(rc)}{said}); starting it "
                       f"again in {delay:g}s", err=True)
            if self._stopping.wait(delay):
                return

    def stop(self, timeout=60):
        """Drain the worker (SIGTERM), while the server can still hear its last reports."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


ERROR_LINE = re.compile(r" (?:ERROR|CRITICAL) |^error: |^[A-Za-z_.]*(?:Error|Exception|Interrupt)\b")


def _relay(stream):
    """Copy the worker's stderr to ours until it closes; its last error line (a log line at
    ERROR, or a traceback's last line), if any."""
    last = None
    out = sys.stderr.buffer
    for line in iter(stream.readline, b""):
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            pass
        text = line.decode(errors="replace").strip()
        if ERROR_LINE.search(text):
            last = text
    stream.close()
    return last


def _exit_text(rc):
    return f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
