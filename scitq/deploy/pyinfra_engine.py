"""The pyinfra engine: bootstrap and teardown of a worker host as pyinfra operations.

Every operation compares a fact of the host with the wanted state and yields commands only
when they differ, so a second bootstrap runs no command and reports no change. Operations
run through pyinfra's API (Inventory, State, add_op, run_ops) over paramiko: one SSH
connection per call, closed at the end, no ControlMaster socket left behind. pyinfra's log
lines for the call go to `log`.

On the host: a venv at REMOTE_ROOT/venv with scitq from the server's wheelhouse (pip with
--no-index), the settings in REMOTE_ROOT/worker.env, and the worker run as
`python -m scitq.worker` by a systemd unit where systemd is PID 1, or else by a small shell
loop (REMOTE_ROOT/supervise.sh) that restarts it when it exits. The worker runs as root and its
tasks as the system user TASK_USER (`--task-user`): REMOTE_ROOT (mode 0700) and worker.env,
which holds the token (0600), are root's alone, and the tasks' directories are under WORKDIR.
"""
import contextlib
import io
import logging
import re
import shlex
import threading
import time
import weakref
from urllib.parse import quote, urlsplit

import greenlet
import httpx
import pyinfra.context
from pyinfra import host
from pyinfra.api import BaseStateCallback, Config, FactBase, Inventory, State, StringCommand, operation
from pyinfra.api.exceptions import ConnectError, PyinfraError
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.operations import files, pip, server, systemd
from pyinfra.operations.util import any_changed

import scitq
from scitq.deploy import REMOTE_ROOT, SERVICE, DeployError, check_target
from scitq.trust import client_context

CONNECT_TIMEOUT = 10         # seconds for the SSH connection
REGISTER_TIMEOUT = 60        # seconds for the started worker to register on the server
STOP_TIMEOUT = 60            # seconds a stopping worker may drain before it is killed

VENV = f"{REMOTE_ROOT}/venv"
ENV_FILE = f"{REMOTE_ROOT}/worker.env"
TASK_USER = "scitq-task"               # tasks run as this system user, never as root
TASK_HOME = f"/var/lib/{TASK_USER}"
TASK_SHELL = "/usr/sbin/nologin"
WORKDIR = "/var/lib/scitq-worker"      # outside REMOTE_ROOT: the task user goes through it
UNIT_FILE = f"/etc/systemd/system/{SERVICE}.service"
SUPERVISOR = f"{REMOTE_ROOT}/supervise.sh"
PIDFILE = f"{REMOTE_ROOT}/{SERVICE}.pid"
LOGFILE = f"{REMOTE_ROOT}/{SERVICE}.log"
CA_FILE = f"{REMOTE_ROOT}/ca.pem"      # the server's CA, which the worker and pip verify it against

UNIT = f"""\
[Unit]
Description=scitq worker
Wants=network-online.target
After=network-online.target

[Service]
EnvironmentFile={ENV_FILE}
Environment=PYTHONUNBUFFERED=1
ExecStart={VENV}/bin/python -m scitq.worker --task-user {TASK_USER}
Restart=always
RestartSec=2
# SIGTERM to the worker alone (it drains: finishes its tasks), then whatever is left is killed.
KillMode=mixed
TimeoutStopSec={STOP_TIMEOUT}

[Install]
WantedBy=multi-user.target
"""

# Where systemd is not PID 1. SIGTERM stops the loop: it passes the signal to the worker
# (which drains) and exits when the worker has.
SUPERVISE = f"""\
#!/bin/sh
# {SERVICE}: runs the scitq worker and starts it again whenever it exits, until SIGTERM.
cd /
echo $$ > {PIDFILE}
stop= child=
trap 'stop=1; [ -z "$child" ] || kill -s TERM "$child" 2>/dev/null' TERM INT
while [ -z "$stop" ]; do
    (set -a; . {ENV_FILE}; set +a; exec {VENV}/bin/python -m scitq.worker --task-user {TASK_USER}) >>{LOGFILE} 2>&1 &
    child=$!
    while kill -0 "$child" 2>/dev/null; do wait "$child"; done
    child=
    [ -n "$stop" ] || sleep 2
done
rm -f {PIDFILE}
"""
_SUPERVISOR_PID = (f'pid=$(cat {PIDFILE} 2>/dev/null) && [ -n "$pid" ] '
                   f'&& grep -qs supervise.sh /proc/$pid/cmdline')
START_SUPERVISOR = f"setsid sh {SUPERVISOR} </dev/null >/dev/null 2>&1 &"
STOP_SUPERVISOR = (
    f"if {_SUPERVISOR_PID}; then kill -s TERM $pid; i=0; "
    f"while [ $i -lt {STOP_TIMEOUT * 10} ] && [ -d /proc/$pid ] "
    f"&& ! grep -qs '^State:.*zombie' /proc/$pid/status; do sleep 0.1; i=$((i+1)); done; "
    f"kill -s KILL -- -$pid 2>/dev/null; fi; rm -f {PIDFILE}")

_pyinfra_log = logging.getLogger("pyinfra")
_pyinfra_log.setLevel(logging.INFO)      # its progress lines are the deploy's log


class _StatePerDeploy:
    """pyinfra's "current state" slot, one per deploy: set by the greenlet that runs the deploy
    (a job thread's, or under gevent's monkey-patching the job greenlet itself) and read by it
    and by the greenlets it spawns (pyinfra runs each operation in one)."""

    def __init__(self):
        self._slots = weakref.WeakKeyDictionary()     # greenlet -> the state it set

    @property
    def module(self):
        g = greenlet.getcurrent()
        while g is not None:
            if g in self._slots:
                return self._slots[g]
            spawner = getattr(g, "spawning_greenlet", None)
            g = spawner() if spawner is not None else None
        return None                          # what pyinfra reads when no state is set

    @module.setter
    def module(self, value):
        self._slots[greenlet.getcurrent()] = value


# pyinfra keeps "the current state" in one slot for the whole process (it runs one deploy per
# process, hosts in greenlets); the server runs a deploy per job, and with one shared slot a
# job would read another's state (its `_if` conditions, its stage).
pyinfra.context.ctx_state.context._container = _StatePerDeploy()


# --- facts and operations of our own -------------------------------------------------

class SystemdIsInit(FactBase):
    """Whether systemd runs the host (sd_booted(): /run/systemd/system exists)."""

    def command(self):
        return "test -d /run/systemd/system && echo yes || echo no"

    def process(self, output):
        return output[0].strip() == "yes"


class SupervisorPid(FactBase):
    """The pid of the supervisor loop running the worker, or None."""

    def command(self):
        return f"if {_SUPERVISOR_PID}; then echo $pid; fi"

    def process(self, output):
        return int(output[0]) if output and output[0].strip().isdigit() else None


@operation()
def supervised(running=True, restarted=False):
    """The worker under its supervisor loop: started, stopped, or restarted if it runs."""
    pid = host.get_fact(SupervisorPid)
    if pid and (running is False or restarted):
        yield STOP_SUPERVISOR
        pid = None
    if running and not pid:
        yield START_SUPERVISOR
    elif pid:
        host.noop(f"the supervised worker runs (pid {pid})")


# --- bootstrap and teardown ------------------------------------------------------------

def bootstrap(target, settings, log):
    """Install, configure and start the worker, then wait until it has registered.
    Returns True when anything on the host changed."""
    env = worker_env(settings)
    with _session(target, log) as (state, h, relay):
        uses_systemd = h.get_fact(SystemdIsInit)
        log(f"[{h.name}] worker supervised by {'systemd' if uses_systemd else SUPERVISOR}")
        plan = _Plan(state)
        plan.add("directory", files.directory, path=REMOTE_ROOT, mode="700")
        user = plan.add(f"task user {TASK_USER}", server.user, user=TASK_USER, system=True, home=TASK_HOME,
                        shell=TASK_SHELL, ensure_home=False)
        plan.add("the task user's home", files.directory, path=TASK_HOME, user=TASK_USER, group=TASK_USER,
                 mode="700")
        if settings.ca_pem:
            ca = plan.add("the server's CA certificate", files.put, src=io.StringIO(settings.ca_pem), dest=CA_FILE,
                     mode="644")
        else:
            ca = plan.add("no pinned CA certificate", files.file, path=CA_FILE, present=False)
        plan.add("venv", pip.venv, path=VENV, python="python3")
        package = plan.add(
            f"scitq {scitq.__version__} from the wheelhouse", pip.packages,
            packages=[f"scitq=={scitq.__version__}"], virtualenv=VENV,
            extra_install_args=pip_args(settings.wheelhouse_url, settings.ca_pem))
        config = plan.add("worker settings", files.put, src=io.StringIO(env), dest=ENV_FILE, mode="600")
        if uses_systemd:
            unit = plan.add(f"unit {SERVICE}.service", files.put, src=io.StringIO(UNIT), dest=UNIT_FILE,
                            mode="644")
            plan.add("systemd daemon-reload", systemd.daemon_reload, _if=any_changed(unit))
            plan.add("restart the worker on change", systemd.service, service=SERVICE, running=None,
                     restarted=True, _if=any_changed(package, config, unit, ca, user))
            plan.add("worker service", systemd.service, service=SERVICE, running=True, enabled=True)
        else:
            script = plan.add("supervisor script", files.put, src=io.StringIO(SUPERVISE), dest=SUPERVISOR,
                              mode="755")
            plan.add("restart the worker on change", supervised, running=None, restarted=True,
                     _if=any_changed(package, config, script, ca, user))
            plan.add("supervised worker", supervised, running=True)
        changed = plan.run(h, relay)
        log(f"[{h.name}] {'changed' if changed else 'no change'}")
        _wait_registered(settings, log, lambda: _service_log(h, uses_systemd))
    return changed


def teardown(target, log):
    """Stop the worker and remove all bootstrap put on the host. Returns True if it changed."""
    with _session(target, log) as (state, h, relay):
        uses_systemd = h.get_fact(SystemdIsInit)
        plan = _Plan(state)
        if uses_systemd:
            plan.add("stop the worker service", systemd.service, service=SERVICE, running=False, enabled=False)
        plan.add("stop the supervised worker", supervised, running=False)   # also where systemd runs
        unit = plan.add("remove the unit", files.file, path=UNIT_FILE, present=False)
        if uses_systemd:
            plan.add("systemd daemon-reload", systemd.daemon_reload, _if=any_changed(unit))
        plan.add(f"remove {REMOTE_ROOT}", files.directory, path=REMOTE_ROOT, present=False)
        plan.add(f"remove {WORKDIR}", files.directory, path=WORKDIR, present=False)
        plan.add(f"remove the task user {TASK_USER}", server.user, user=TASK_USER, present=False)
        plan.add(f"remove {TASK_HOME}", files.directory, path=TASK_HOME, present=False)
        changed = plan.run(h, relay)
        log(f"[{h.name}] {'removed' if changed else 'nothing to remove'}")
    return changed


def worker_env(settings):
    """The text of worker.env: SCITQ_* variables that `python -m scitq.worker` reads, quoted
    so that systemd's EnvironmentFile and sh's `.` read them alike."""
    values = {"SCITQ_SERVER": settings.server_url, "SCITQ_NAME": settings.name,
              "SCITQ_CONCURRENCY": settings.concurrency, "SCITQ_PREFETCH": "auto" if settings.prefetch is None else settings.prefetch,
              "SCITQ_BATCH": settings.batch or "", "SCITQ_TOKEN": settings.token or "",
              "SCITQ_WORKDIR": WORKDIR, "SCITQ_CA": CA_FILE if settings.ca_pem else "",
              **settings.extra_env}
    lines = ["# scitq worker settings, written by scitq's deploy (changes here are overwritten)\n"]
    for key, value in values.items():
        value = "" if value is None else str(value)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or re.search(r"['\\\n\r\0]", value):
            raise DeployError(f"worker setting {key!r}: a name of letters, digits and _, and a value "
                              "without quote, backslash or line break, are needed for " + ENV_FILE)
        lines.append(f"{key}='{value}'\n")
    return "".join(lines)


def pip_args(wheelhouse_url, ca_pem=None):
    """pip's options to install from the wheelhouse alone (and trust it over plain HTTP, or
    verify it over https against the server's CA when one is pinned)."""
    args = ["--no-index", "--find-links", wheelhouse_url, "--no-cache-dir",
            "--disable-pip-version-check", "--progress-bar", "off"]
    parts = urlsplit(wheelhouse_url)
    if parts.scheme == "http" and parts.hostname:
        args += ["--trusted-host", parts.hostname]
    elif parts.scheme == "https" and ca_pem:
        args += ["--cert", CA_FILE]
    return " ".join(shlex.quote(a) for a in args)


# --- the machinery ------------------------------------------------------------------------

class _Plan:
    """Operations added to one host's state, named for the log; run() says if any changed."""

    def __init__(self, state):
        self.state = state
        self.ops = []

    def add(self, name, op, **kwargs):
        meta = next(iter(add_op(self.state, op, name=name, **kwargs).values()))
        self.ops.append((name, meta))
        return meta

    def run(self, h, relay):
        try:
            run_ops(self.state)
        except PyinfraError:
            pass                         # the host failed: said below, with what failed
        failed = next((name for name, meta in self.ops if not meta.is_complete() or meta.did_error()), None)
        if failed or h in self.state.failed_hosts:
            detail = " | ".join(relay.errors[-8:]) or "see the log"
            raise DeployError(f"{failed or 'deploy'} failed on {h.name}: {detail}")
        return any(meta.did_change() for _name, meta in self.ops)


class _Relay(logging.Handler):
    """pyinfra's log records of this thread (its greenlets run in it) as lines to `log`."""

    def __init__(self, log):
        super().__init__(logging.INFO)
        self.log = log
        self.thread = threading.get_ident()
        self.errors = []

    def emit(self, record):
        if record.thread != self.thread:
            return
        line = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors.append(line.strip())
        self.log(line)


class _Output(BaseStateCallback):
    """What the commands of an operation printed, to `log` once it succeeded (pyinfra itself
    logs the output of a failed one)."""

    def __init__(self, log):
        self.log = log

    def operation_end(self, state, op_hash):
        for h in state.inventory:
            data = state.ops[h].get(op_hash)
            if data is not None and data.operation_meta.is_complete() and data.operation_meta.did_succeed():
                for line in data.operation_meta.stdout_lines + data.operation_meta.stderr_lines:
                    self.log(f"{h.print_prefix}{line}")


@contextlib.contextmanager
def _session(target, log):
    """(state, host, relay) for one host, connected; disconnected at the end, always."""
    check_target(target)
    data = {"ssh_user": target.user, "ssh_port": target.port,
            "ssh_known_hosts_file": "/dev/null",        # hosts are new and their addresses reused:
            "ssh_strict_host_key_checking": "off",      # no host key is known, none is kept
            "ssh_config_file": "/dev/null"}             # nor does ~/.ssh/config change the target
    if target.key:
        data.update(ssh_key=target.key, ssh_allow_agent=False, ssh_look_for_keys=False)
    sudo = target.user != "root" if target.sudo is None else target.sudo
    inventory = Inventory(([(target.host, data)], {}))
    state = State(inventory, Config(CONNECT_TIMEOUT=CONNECT_TIMEOUT, SUDO=sudo), check_for_changes=False)
    state.print_noop_info = True
    state.add_callback_handler(_Output(log))
    h = inventory.get_host(target.host)
    relay = _Relay(log)
    _pyinfra_log.addHandler(relay)
    try:
        try:
            h.connect(show_errors=False, raise_exceptions=True)
        except (ConnectError, PyinfraError) as exc:
            raise DeployError(f"cannot reach {target.host}:{target.port} over SSH: {exc}") from None
        state.activate_host(h)
        yield state, h, relay
    finally:
        _pyinfra_log.removeHandler(relay)
        if h.connected:
            h.disconnect()
        client = getattr(h.connector, "client", None)
        if client is not None:
            client.close()                   # pyinfra's disconnect leaves paramiko's open


def _wait_registered(settings, log, service_log):
    """Poll the server until the worker is there and alive; DeployError after REGISTER_TIMEOUT."""
    url = f"{settings.server_url.rstrip('/')}/api/v1/workers/{quote(settings.name, safe='')}"
    headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
    deadline = time.monotonic() + REGISTER_TIMEOUT
    last = "no answer"
    with httpx.Client(headers=headers, timeout=10, verify=client_context(cadata=settings.ca_pem)) as http:
        while True:
            try:
                resp = http.get(url)
                if resp.status_code == 200:
                    worker = resp.json()
                    if worker.get("status") in ("running", "paused", "draining"):
                        log(f"worker {settings.name} registered on {settings.server_url} "
                            f"(concurrency {worker.get('concurrency')}, version {worker.get('version')})")
                        return worker
                    last = f"worker status {worker.get('status')}"
                else:
                    last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise DeployError(f"worker {settings.name} did not register on {settings.server_url} within "
                                  f"{REGISTER_TIMEOUT} s ({last}); its log ends with:\n{service_log()}")
            time.sleep(0.5)


def _service_log(h, uses_systemd):
    command = (f"journalctl -u {SERVICE} -n 30 --no-pager" if uses_systemd
               else f"tail -n 30 {LOGFILE}")
    try:
        _status, output = h.run_shell_command(StringCommand(command + " 2>&1"), _sudo=h.state.config.SUDO)
        return "\n".join(line.line for line in output) or "(empty)"
    except Exception as exc:       # the log is a courtesy: never hide the real error behind it
        return f"(could not read it: {exc})"
