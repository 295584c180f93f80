"""The Ansible engine: bootstrap and teardown of a worker host by playbooks/worker.yml and
playbooks/teardown.yml, run through ansible-runner (`pip install 'scitq[ansible]'`).

It puts on the host exactly what the pyinfra engine puts there (its paths, unit, supervisor
script, worker.env and pip command; the roles' templates are checked against them by
tests/test_deploy_ansible.py), so a host deployed by one engine is found unchanged, and torn
down, by the other. The layout's values are passed to the playbooks from pyinfra_engine.

One run of ansible-playbook per call, in a private data dir made for it and removed after:
its inventory holds the one target; settings go in as extra vars (a file, not the command
line, and marked !unsafe so that Ansible never templates them). SSH connections are not
multiplexed (ControlMaster=no): nothing is left running on this machine when a call returns.
Each line ansible-playbook prints goes to `log`, and the output of the commands that changed
something (pip's, for one).
"""
import collections
import json
import os
import shutil
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

import scitq
from scitq.deploy import REMOTE_ROOT, SERVICE, DeployError, check_target
from scitq.deploy import pyinfra_engine as layout     # the layout on the host is the pyinfra engine's

CONNECT_TIMEOUT = layout.CONNECT_TIMEOUT      # seconds for an SSH connection
REGISTER_TIMEOUT = layout.REGISTER_TIMEOUT    # seconds for the started worker to register
RUN_TIMEOUT = 1800                            # seconds for a whole playbook run
SSH_ARGS = ("-F /dev/null -o ControlMaster=no -o ControlPersist=no -o StrictHostKeyChecking=no "
            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ServerAliveInterval=15")


def bootstrap(target, settings, log):
    """Install, configure and start the worker, then wait until it has registered.
    Returns True when anything on the host changed."""
    layout.worker_env(settings)               # refuses what worker.env cannot hold, before any SSH
    return _run("worker.yml", target, extravars(settings), log, done=("changed", "no change"))


def teardown(target, log):
    """Stop the worker and remove all bootstrap put on the host. Returns True if it changed."""
    return _run("teardown.yml", target, layout_vars(), log, done=("removed", "nothing to remove"))


def extravars(settings):
    """The playbook's variables for these settings: the roles' documented ones, and the layout."""
    return {
        **layout_vars(),
        "scitq_server_url": settings.server_url,
        "scitq_wheelhouse_url": settings.wheelhouse_url,
        "scitq_worker_name": settings.name,
        "scitq_concurrency": settings.concurrency,
        "scitq_prefetch": "auto" if settings.prefetch is None else settings.prefetch,
        "scitq_batch": settings.batch or "",
        "scitq_token": settings.token or "",
        "scitq_version": scitq.__version__,
        "scitq_extra_env": dict(settings.extra_env),
        "scitq_ca_pem": settings.ca_pem or "",
        "scitq_pip_args": layout.pip_args(settings.wheelhouse_url, settings.ca_pem),
        "scitq_register_timeout": REGISTER_TIMEOUT,
    }


def layout_vars():
    """Where things go on the host and how the supervisor loop is driven: the pyinfra engine's."""
    return {
        "scitq_root": REMOTE_ROOT,
        "scitq_service": SERVICE,
        "scitq_venv": layout.VENV,
        "scitq_env_file": layout.ENV_FILE,
        "scitq_workdir": layout.WORKDIR,
        "scitq_task_user": layout.TASK_USER,
        "scitq_task_home": layout.TASK_HOME,
        "scitq_task_shell": layout.TASK_SHELL,
        "scitq_unit_file": layout.UNIT_FILE,
        "scitq_supervisor": layout.SUPERVISOR,
        "scitq_pidfile": layout.PIDFILE,
        "scitq_logfile": layout.LOGFILE,
        "scitq_ca_file": layout.CA_FILE,
        "scitq_stop_timeout": layout.STOP_TIMEOUT,
        "scitq_supervisor_pid_test": layout._SUPERVISOR_PID,
        "scitq_start_supervisor": layout.START_SUPERVISOR,
        "scitq_stop_supervisor": layout.STOP_SUPERVISOR,
    }


def playbooks_dir():
    """The directory of worker.yml and teardown.yml: in the package (scitq/deploy/playbooks),
    next to it in a source checkout (playbooks/), or where data_files put it (share/scitq/playbooks)."""
    package = Path(scitq.__file__).resolve().parent
    candidates = [package / "deploy" / "playbooks", package.parent / "playbooks"]
    prefixes = [sys.prefix, sysconfig.get_path("data")]
    if site.ENABLE_USER_SITE:
        prefixes.append(site.getuserbase())
    candidates += [Path(prefix) / "share" / "scitq" / "playbooks" for prefix in dict.fromkeys(prefixes)]
    for path in candidates:
        if (path / "worker.yml").is_file() and (path / "teardown.yml").is_file():
            return path
    raise DeployError("the Ansible playbooks are not installed; looked in " + ", ".join(map(str, candidates)))


# --- the machinery ------------------------------------------------------------------------

def _ansible_runner():
    from scitq.errors import ProviderUnavailable
    from scitq.providers.base import require
    try:
        return require("ansible_runner", "ansible")
    except ProviderUnavailable as exc:
        raise DeployError(str(exc)) from None


def _run(playbook, target, variables, log, done):
    """Run one playbook on the target; True if the recap counts a change. Raises DeployError."""
    check_target(target)                   # its host and user go to ssh's command line
    ansible_runner = _ansible_runner()
    path = playbooks_dir() / playbook
    events = _Events(log)
    data_dir = tempfile.mkdtemp(prefix="scitq-ansible-")      # 0700: the extra vars hold the token
    try:
        os.makedirs(os.path.join(data_dir, "env"))
        with open(os.path.join(data_dir, "env", "extravars"), "w") as f:
            f.write("".join(f"{json.dumps(key)}: {_unsafe_yaml(value)}\n" for key, value in variables.items()))
        open(os.path.join(data_dir, "ansible.cfg"), "w").close()   # no ansible.cfg of this machine applies
        runner = ansible_runner.run(
            private_data_dir=data_dir, playbook=str(path), inventory=_inventory(target),
            envvars=_envvars(data_dir), event_handler=events,
            cancel_callback=lambda: False,     # else, in the main thread, it takes SIGINT and SIGTERM
            quiet=True, suppress_output_file=True, timeout=RUN_TIMEOUT)
    except Exception as exc:                 # runner's own troubles (not the playbook's)
        raise DeployError(f"ansible-runner could not run {playbook} on {target.host}: {exc}") from exc
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    where = f"{target.host}:{target.port}"
    if events.unreachable:
        raise DeployError(f"cannot reach {where} over SSH: {events.unreachable[-1]}")
    if events.failed:
        task, host, action, res = events.failed[-1]
        message = str(res.get("msg") or "failed")
        if action in ("fail", "ansible.builtin.fail"):      # the playbook's own words
            raise DeployError(message)
        detail = [message]
        output = str(res.get("stderr") or res.get("stdout") or "").strip()
        if output:
            detail += [line.strip() for line in output.splitlines()[-8:] if line.strip()]
        raise DeployError(f"{task} failed on {host}: {' | '.join(detail)}")
    if runner.status != "successful" or runner.rc != 0 or events.stats is None:
        tail = " | ".join(events.tail) or "no output"
        raise DeployError(f"ansible-playbook {playbook} on {where}: {runner.status} (rc {runner.rc}): {tail}")
    changed = sum(events.stats.get("changed", {}).values()) > 0
    log(f"[{target.host}] {done[0] if changed else done[1]}")
    return changed


class _Events:
    """ansible-runner's event handler: each line printed to `log`, and what failed, and the recap.
    Returns False so that runner writes no event to disk (their results hold module arguments)."""

    def __init__(self, log):
        self.log = log
        self.failed = []                   # (task, host, action, result)
        self.unreachable = []              # messages
        self.stats = None
        self.tail = collections.deque(maxlen=10)

    def __call__(self, event):
        for line in (event.get("stdout") or "").splitlines():
            if line.strip():
                self.log(line)
                self.tail.append(line.strip())
        kind = event.get("event")
        data = event.get("event_data") or {}
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        host = data.get("remote_addr") or data.get("host")
        if kind == "runner_on_ok" and res.get("changed"):
            self._said(host, res)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            self.failed.append((data.get("task") or "a task", host, data.get("task_action"), res))
        elif kind == "runner_on_unreachable":
            self.unreachable.append(str(res.get("msg") or "unreachable").strip().removeprefix("Task failed: "))
        elif kind == "playbook_on_stats":
            self.stats = {key: data.get(key) or {} for key in
                          ("changed", "dark", "failures", "ignored", "ok", "processed", "rescued", "skipped")}
        return False

    def _said(self, host, res):
        """What a command that changed things printed, each line tagged with its host."""
        for stream in ("stdout", "stderr"):
            for line in str(res.get(stream) or "").splitlines():
                if line.strip():
                    self.log(f"[{host}] {line}")


def _inventory(target):
    sudo = target.user != "root" if target.sudo is None else target.sudo
    host = {
        "ansible_host": target.host, "ansible_port": target.port, "ansible_user": target.user,
        "ansible_python_interpreter": "auto_silent",
        # Ansible's temporary files on the host: in /tmp, not a ~/.ansible left behind
        "ansible_remote_tmp": f"/tmp/.scitq-ansible-{target.user}",
    }
    if target.key:
        host.update(ansible_ssh_private_key_file=str(target.key), ansible_ssh_extra_args="-o IdentitiesOnly=yes")
    if sudo:
        host.update(ansible_become=True, ansible_become_method="sudo", ansible_become_user="root")
    return {"all": {"hosts": {target.host: host}}}


def _envvars(data_dir):
    """Ansible's settings for the run; all its files on this machine go in data_dir."""
    return {
        "ANSIBLE_CONFIG": os.path.join(data_dir, "ansible.cfg"),
        "ANSIBLE_HOME": os.path.join(data_dir, "home"),
        "ANSIBLE_LOCAL_TEMP": os.path.join(data_dir, "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(data_dir, "cp"),
        "ANSIBLE_SSH_ARGS": SSH_ARGS,
        "ANSIBLE_HOST_KEY_CHECKING": "False",       # hosts are new and their addresses reused
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_SSH_TRANSFER_METHOD": "piped",     # files through the ssh command itself, no sftp
        "ANSIBLE_TIMEOUT": str(CONNECT_TIMEOUT),
        "ANSIBLE_SSH_RETRIES": "0",
        "ANSIBLE_GATHERING": "explicit",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "True",
        "ANSIBLE_FORCE_COLOR": "False",
        "ANSIBLE_VERBOSITY": "0",                   # more would print module arguments (the token)
        "ANSIBLE_DEBUG": "False",
        "ANSIBLE_LOG_PATH": os.devnull,
        "ANSIBLE_DIFF_ALWAYS": "False",
        "ANSIBLE_KEEP_REMOTE_FILES": "False",
        "ANSIBLE_DISPLAY_ARGS_TO_STDOUT": "False",
        "ANSIBLE_ROLES_PATH": str(playbooks_dir() / "roles"),
        # runner starts the ansible-playbook it finds on this PATH: this environment's first
        "PATH": os.pathsep.join([os.path.dirname(_ansible_playbook()), os.environ.get("PATH", os.defpath)]),
    }


def _ansible_playbook():
    """ansible-playbook next to this Python (the same environment), else the one on PATH."""
    here = Path(sys.executable).parent / "ansible-playbook"
    found = str(here) if here.is_file() and os.access(here, os.X_OK) else shutil.which("ansible-playbook")
    if not found:
        raise DeployError("ansible-playbook is not installed: pip install 'scitq[ansible]'")
    return found


def _unsafe_yaml(value):
    """value as YAML, its strings tagged !unsafe: data to Ansible, never a template."""
    if isinstance(value, str):
        # An empty string holds no template, and ansible-core 2.19 loads `!unsafe ""` as None.
        return "!unsafe " + json.dumps(value) if value else '""'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {_unsafe_yaml(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return _unsafe_yaml(str(value))
