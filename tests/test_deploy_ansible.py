"""Deploy with Ansible (playbooks/ through ansible-runner): a `local` host (Debian, systemd,
sshd; no package index) made a worker of a real server over SSH, on each database; then
idempotence, teardown, the same layout as the pyinfra engine's (each engine finds the other's
host unchanged and tears it down), the fallback without systemd, and the errors of a host that
cannot be reached, a missing wheelhouse and a server the worker cannot reach.

The hosts reach this machine only at the bridge address: the server listens there, and so does
a small HTTP server for the wheelhouse. No SSH process may be left behind (no ControlMaster).

Needs root, ansible-runner and what the local provider needs; in CI (CI=true) nothing here skips.
"""
import concurrent.futures
import glob
import json
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import psutil
import pytest
from procs import wait_until
from hosts import delete_hosts, local_provider, make_ssh_key, real_part_missing, serving

import scitq
from scitq.client import Client
from scitq.deploy import (REMOTE_ROOT, SERVICE, DeployError, Target, WorkerSettings, ansible_engine, pyinfra_engine,
                          wheelhouse)
from scitq.providers import InstanceSpec

# A run dir, bridge and subnet of this module's own, so it never meets hosts made by anything else.
CONFIG = {"run_dir": "/run/scitq/test-deploy-ansible", "bridge": "scitqbran",
          "subnet": "10.213.15.0/24", "max_hosts": 2}
TOKEN = "t0ken-of-the-ansible-test"
UNUSED = "10.213.15.254"        # in the subnet, on the bridge, never given to a host
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
       "-o", "ControlMaster=no", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
DEPLOYED = (f"{REMOTE_ROOT} {pyinfra_engine.UNIT_FILE} "
            f"/etc/systemd/system/multi-user.target.wants/{SERVICE}.service "
            f"{pyinfra_engine.WORKDIR} {pyinfra_engine.TASK_HOME}")
TIMINGS = {}


@pytest.fixture(scope="module", autouse=True)
def ansible_runner_installed():
    try:
        importlib.import_module("ansible_runner")
    except ImportError as exc:
        real_part_missing(f"ansible-runner is not installed: {exc}")


@pytest.fixture(scope="module")
def provider():
    p = local_provider(CONFIG)
    p.image()
    try:
        yield p
    finally:
        delete_hosts(p)
        if TIMINGS:
            print("\n" + "\n".join(f"{what}: {seconds:.1f} s" for what, seconds in TIMINGS.items()))


@pytest.fixture
def ssh_key(tmp_path):
    return make_ssh_key(tmp_path / "id_ed25519")


@pytest.fixture
def host(provider, ssh_key):
    """A fresh host with the key; deleted after the test, passed or failed."""
    try:
        yield provider.create(InstanceSpec(name=f"da{os.getpid() % 100000}", flavor="local-2", region="local",
                                           ssh_public_key=ssh_key.with_suffix(".pub").read_text()))
    finally:
        delete_hosts(provider)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    path = tmp_path_factory.mktemp("wheelhouse")
    wheelhouse.build(path)
    return path


@pytest.fixture
def wheelhouse_url(provider, host, wheels):
    """The wheelhouse over HTTP at the bridge address (which exists while hosts do)."""
    with serving(provider.bridge_address, wheels) as url:
        yield url


@pytest.fixture
def nothing_left_here():
    """After the test: no SSH process (client or [mux] master) and no Ansible data dir left
    by the deploys on this machine."""
    def ssh_processes():
        found = set()
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["name"] == "ssh" and ("[mux]" in cmdline or "scitq-ansible-" in cmdline
                                               or "ControlMaster=no -o ControlPersist=no" in cmdline):
                found.add(proc.info["pid"])
        return found

    def data_dirs():
        return set(glob.glob(os.path.join(tempfile.gettempdir(), "scitq-ansible-*")))

    before, dirs = ssh_processes(), data_dirs()
    yield
    assert ssh_processes() - before == set(), "ssh processes left behind"
    assert [p for p in psutil.Process().children(recursive=True) if p.name() in ("ssh", "ansible-playbook")] == []
    assert data_dirs() - dirs == set()


def ssh(key, ip, command, check=True):
    proc = subprocess.run([*SSH, "-i", str(key), f"root@{ip}", command], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"ssh {ip} {command!r}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def timed(what, fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    TIMINGS[what] = time.monotonic() - started
    return result


def bootstrap(target, settings, log):
    return ansible_engine.bootstrap(target, settings, log)


def assert_torn_down(key, ip):
    left = ssh(key, ip, f"ls -d {DEPLOYED} /root/.ansible 2>/dev/null; pgrep -af '[s]citq[.]worker|[s]upervise[.]sh' || true")
    assert left == "", f"left on {ip}: {left}"


def test_bootstrap_run_again_and_teardown(db_url, procs, provider, host, wheelhouse_url, ssh_key, nothing_left_here):
    # On the bridge, not loopback: TLS of the server's own CA, which the host pins.
    server = procs.server(db_url, "--host", provider.bridge_address, "--insecure")
    server_url = f"https://{provider.bridge_address}:{urlsplit(server.url).port}"
    ca = procs.tmp / "data" / "tls" / "ca.pem"
    settings = WorkerSettings(server_url=server_url, wheelhouse_url=wheelhouse_url, name=host.name,
                              concurrency=3, prefetch=1, token=TOKEN, ca_pem=ca.read_text())
    target = Target(host.ip, key=str(ssh_key))
    db = db_url.split(":")[0].split("+")[0]
    log = []

    assert timed(f"ansible bootstrap, first run ({db})", bootstrap, target, settings, log.append) is True
    assert any(line.startswith("TASK [scitq_worker : ") for line in log), log
    assert any("worker supervised by systemd" in line for line in log)
    assert any("Successfully installed" in line and "httpx" in line for line in log)
    assert any(f"worker {host.name} registered on {server_url} (concurrency 3" in line for line in log)
    assert any(f"{host.ip}" in line and "changed=" in line and "failed=0" in line for line in log)
    assert log[-1] == f"[{host.ip}] changed"
    assert not any(TOKEN in line for line in log)

    # What is on the host is what the pyinfra engine puts there, byte for byte.
    assert ssh(ssh_key, host.ip, f"cat {pyinfra_engine.UNIT_FILE}") + "\n" == pyinfra_engine.UNIT
    assert ssh(ssh_key, host.ip, f"cat {pyinfra_engine.ENV_FILE}") + "\n" == pyinfra_engine.worker_env(settings)
    modes = ssh(ssh_key, host.ip, f"stat -c '%n %a' {REMOTE_ROOT} {pyinfra_engine.ENV_FILE} {pyinfra_engine.UNIT_FILE}")
    assert modes.splitlines() == [f"{REMOTE_ROOT} 700", f"{pyinfra_engine.ENV_FILE} 600",
                                  f"{pyinfra_engine.UNIT_FILE} 644"]
    assert ssh(ssh_key, host.ip, f"systemctl is-active {SERVICE}; systemctl is-enabled {SERVICE}").split() == [
        "active", "enabled"]
    freeze = ssh(ssh_key, host.ip, f"{pyinfra_engine.VENV}/bin/pip freeze").lower().split()
    assert f"scitq=={scitq.__version__}" in freeze and any(line.startswith("httpx==") for line in freeze)

    assert ssh(ssh_key, host.ip, f"cat {pyinfra_engine.CA_FILE}") == ca.read_text().strip()
    with Client(server_url, ca=str(ca)) as client:
        worker = client.worker(host.name)
        assert (worker["status"], worker["concurrency"], worker["prefetch"], worker["hostname"]) == (
            "running", 3, 1, host.name)
        ids = client.add_tasks([{"command": "sleep 0.2; hostname"} for _ in range(9)], batch="ansible")
        summary = client.wait_batch("ansible", interval=0.5, timeout=120)
        assert summary["counts"]["succeeded"] == 9
        assert {client.output(tid)[0].decode().strip() for tid in ids} == {host.name}

        # A second run changes nothing and says so; the worker is not restarted.
        pid = ssh(ssh_key, host.ip, "pgrep -f '[p]ython -m scitq.worker'")
        log.clear()
        assert timed(f"ansible bootstrap, second run ({db})", bootstrap, target, settings, log.append) is False
        assert any(f"{host.ip}" in line and "changed=0" in line for line in log), log
        assert not any(line.startswith("changed:") for line in log), log
        assert log[-1] == f"[{host.ip}] no change"
        assert ssh(ssh_key, host.ip, "pgrep -f '[p]ython -m scitq.worker'") == pid

    log.clear()
    assert timed(f"ansible teardown ({db})", ansible_engine.teardown, target, log.append) is True
    assert log[-1] == f"[{host.ip}] removed"
    assert_torn_down(ssh_key, host.ip)
    assert ssh(ssh_key, host.ip, f"systemctl is-active {SERVICE} || true") in ("inactive", "unknown")
    assert ansible_engine.teardown(target, log.append) is False            # idempotent
    assert log[-1] == f"[{host.ip}] nothing to remove"


def test_same_layout_as_the_pyinfra_engine(procs, tmp_path, provider, host, wheelhouse_url, ssh_key,
                                           monkeypatch, nothing_left_here):
    """Each engine finds the other's host unchanged, and tears it down; with systemd, and with
    the supervisor loop where systemd is not (the engines are told so)."""
    server = procs.server(f"sqlite:///{tmp_path}/scitq.db", "--host", provider.bridge_address, "--insecure")
    server_url = f"https://{provider.bridge_address}:{urlsplit(server.url).port}"
    settings = WorkerSettings(server_url=server_url, wheelhouse_url=wheelhouse_url, name=host.name, concurrency=2,
                              ca_pem=(tmp_path / "data" / "tls" / "ca.pem").read_text())
    target = Target(host.ip, key=str(ssh_key))
    log = []

    # systemd: Ansible deploys, pyinfra finds nothing to do, pyinfra tears down.
    assert bootstrap(target, settings, log.append) is True
    assert timed("pyinfra bootstrap of the Ansible-deployed host (no change)", pyinfra_engine.bootstrap,
                 target, settings, log.append) is False
    assert timed("pyinfra teardown of the Ansible-deployed host", pyinfra_engine.teardown, target, log.append) is True
    assert_torn_down(ssh_key, host.ip)

    # No systemd: both engines are told so.
    extravars = ansible_engine.extravars
    monkeypatch.setattr(ansible_engine, "extravars", lambda s: {**extravars(s), "scitq_systemd": False})
    monkeypatch.setattr(pyinfra_engine.SystemdIsInit, "command", lambda self: "echo no")
    log.clear()
    assert timed("ansible bootstrap under supervise.sh, first run", bootstrap, target, settings, log.append) is True
    assert any(f"worker supervised by {pyinfra_engine.SUPERVISOR}" in line for line in log)
    assert any("] started" in line for line in log), log
    assert ssh(ssh_key, host.ip, f"cat {pyinfra_engine.SUPERVISOR}") + "\n" == pyinfra_engine.SUPERVISE
    assert ssh(ssh_key, host.ip, f"ls {pyinfra_engine.UNIT_FILE} 2>/dev/null || true") == ""
    assert ssh(ssh_key, host.ip, "pgrep -f '[s]upervise[.]sh'")
    with Client(server_url, ca=str(tmp_path / "data" / "tls" / "ca.pem")) as client:
        assert client.worker(host.name)["concurrency"] == 2
        # New settings: the supervisor loop restarts the worker with them.
        settings.concurrency = 4
        assert bootstrap(target, settings, log.append) is True
        wait_until(lambda: client.worker(host.name)["concurrency"] == 4, 30, what="the worker re-registered")
    assert timed("ansible bootstrap under supervise.sh, second run", bootstrap, target, settings, log.append) is False
    assert pyinfra_engine.bootstrap(target, settings, log.append) is False
    assert pyinfra_engine.teardown(target, log.append) is True
    assert_torn_down(ssh_key, host.ip)
    assert ansible_engine.teardown(target, log.append) is False

    # And the other way: pyinfra deploys (systemd again), Ansible finds nothing to do and tears down.
    monkeypatch.undo()
    assert timed("pyinfra bootstrap, first run", pyinfra_engine.bootstrap, target, settings, log.append) is True
    assert timed("ansible bootstrap of the pyinfra-deployed host (no change)", bootstrap,
                 target, settings, log.append) is False
    assert ansible_engine.teardown(target, log.append) is True
    assert_torn_down(ssh_key, host.ip)


def test_failures_say_what_failed_where(provider, host, wheelhouse_url, ssh_key, monkeypatch, nothing_left_here):
    dead = f"http://{provider.bridge_address}:9"        # this machine, where nothing listens
    settings = WorkerSettings(server_url=dead, wheelhouse_url=wheelhouse_url, name="nowhere")

    # An address nobody answers (on the bridge, so the packets stay on this machine).
    for action, args in ((bootstrap, (Target(UNUSED), settings)), (ansible_engine.teardown, (Target(UNUSED),))):
        started = time.monotonic()
        with pytest.raises(DeployError, match=rf"cannot reach {UNUSED}:22 over SSH: .*{UNUSED}") as err:
            action(*args, log=lambda line: None)
        seconds = time.monotonic() - started
        assert seconds < 20, seconds
    print(f"\nunreachable, after {seconds:.1f} s: {err.value}")

    # No wheelhouse there: the pip task fails, in pip's words.
    target = Target(host.ip, key=str(ssh_key))
    broken = WorkerSettings(server_url=dead, wheelhouse_url=f"{dead}/wheelhouse/", name=host.name)
    with pytest.raises(DeployError, match=rf"scitq {scitq.__version__} from the wheelhouse failed on {host.ip}: "
                                          ".*No matching distribution"):
        bootstrap(target, broken, log=lambda line: None)

    # A server the worker cannot reach: it never registers; the error ends with its log.
    monkeypatch.setattr(ansible_engine, "REGISTER_TIMEOUT", 5)
    lonely = WorkerSettings(server_url=dead, wheelhouse_url=wheelhouse_url, name=host.name, token=TOKEN)
    log = []
    started = time.monotonic()
    with pytest.raises(DeployError, match=rf"^worker {host.name} did not register on {dead} within 5 s "
                                          r"\(.*Connection refused.*\); its log ends with:\n") as err:
        bootstrap(target, lonely, log=log.append)
    assert time.monotonic() - started < 60
    assert "POST /workers failed" in str(err.value)
    assert not any(TOKEN in line for line in log)
    # It would retry for ever, and drain for as long (TimeoutStopSec): stop it now.
    ssh(ssh_key, host.ip, f"systemctl kill -s KILL {SERVICE}; systemctl stop {SERVICE}")

    # Settings worker.env cannot hold are refused before any connection.
    with pytest.raises(DeployError, match="quote, backslash or line break"):
        bootstrap(Target(UNUSED), WorkerSettings(server_url=dead, wheelhouse_url=wheelhouse_url, name="x",
                                                 token="it's"), log=lambda line: None)


# --- without hosts ---------------------------------------------------------------------

RENDER = """\
- hosts: all
  gather_facts: false
  vars_files: [{roles}/scitq_worker/defaults/main.yml]
  tasks:
    - ansible.builtin.template: {{src: "{roles}/scitq_worker/templates/{{{{ item }}}}.j2", dest: "{out}/{{{{ item }}}}"}}
      loop: [worker.env, scitq-worker.service, supervise.sh]
    - ansible.builtin.copy:
        dest: "{out}/vars.json"
        content: "{{{{ {{'pip_args': scitq_pip_args, 'supervisor_pid': scitq_supervisor_pid_test,
                   'start': scitq_start_supervisor, 'stop': scitq_stop_supervisor, 'workdir': scitq_workdir,
                   'task_user': [scitq_task_user, scitq_task_home, scitq_task_shell]}} | to_json }}}}"
- hosts: all
  gather_facts: false
  vars_files: [{roles}/scitq_teardown/defaults/main.yml]
  tasks:
    - ansible.builtin.copy:
        dest: "{out}/teardown.json"
        content: "{{{{ {{'root': scitq_root, 'unit': scitq_unit_file, 'supervisor_pid': scitq_supervisor_pid_test,
                   'stop': scitq_stop_supervisor, 'workdir': scitq_workdir,
                   'task_user': [scitq_task_user, scitq_task_home]}} | to_json }}}}"
"""


def test_the_roles_defaults_and_templates_are_the_pyinfra_engines(tmp_path):
    """Rendered by Ansible with the role defaults alone (as when the playbooks are run by hand),
    the files and commands are the pyinfra engine's, which the Ansible engine also passes."""
    import json

    import ansible_runner
    settings = WorkerSettings(server_url="http://10.0.0.1:5000", wheelhouse_url="http://10.0.0.1:5000/wheel house/",
                              name="w1", concurrency=4, prefetch=2, token="a{{ b }}",
                              extra_env={"TMPDIR": "/scratch", "SCITQ_NAME": "w2", "N": 3})
    documented = {key: value for key, value in ansible_engine.extravars(settings).items()
                  if key in ("scitq_server_url", "scitq_wheelhouse_url", "scitq_worker_name", "scitq_concurrency",
                             "scitq_prefetch", "scitq_batch", "scitq_token", "scitq_version", "scitq_extra_env")}
    assert len(documented) == 9
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "render.yml").write_text(RENDER.format(roles=ansible_engine.playbooks_dir() / "roles", out=out))
    data = tmp_path / "data"
    (data / "env").mkdir(parents=True)
    (data / "env" / "extravars").write_text(
        "".join(f"{json.dumps(k)}: {ansible_engine._unsafe_yaml(v)}\n" for k, v in documented.items()))
    runner = ansible_runner.run(
        private_data_dir=str(data), playbook=str(tmp_path / "render.yml"), quiet=True, cancel_callback=lambda: False,
        inventory={"all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                                   "ansible_remote_tmp": str(tmp_path / "remote")}}}},
        envvars={"PATH": os.pathsep.join([os.path.dirname(ansible_engine._ansible_playbook()), os.environ["PATH"]]),
                 "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_HOME": str(tmp_path / "home")})
    assert runner.rc == 0, runner.stdout.read()

    assert (out / "worker.env").read_text() == pyinfra_engine.worker_env(settings)
    assert (out / "scitq-worker.service").read_text() == pyinfra_engine.UNIT
    assert (out / "supervise.sh").read_text() == pyinfra_engine.SUPERVISE
    task_user = [pyinfra_engine.TASK_USER, pyinfra_engine.TASK_HOME, pyinfra_engine.TASK_SHELL]
    wanted = {"pip_args": pyinfra_engine.pip_args(settings.wheelhouse_url), "start": pyinfra_engine.START_SUPERVISOR,
              "supervisor_pid": pyinfra_engine._SUPERVISOR_PID, "stop": pyinfra_engine.STOP_SUPERVISOR,
              "workdir": pyinfra_engine.WORKDIR, "task_user": task_user}
    assert json.loads((out / "vars.json").read_text()) == wanted
    assert json.loads((out / "teardown.json").read_text()) == {
        "root": REMOTE_ROOT, "unit": pyinfra_engine.UNIT_FILE, "supervisor_pid": pyinfra_engine._SUPERVISOR_PID,
        "stop": pyinfra_engine.STOP_SUPERVISOR, "workdir": pyinfra_engine.WORKDIR, "task_user": task_user[:2]}
    # Both engines start the worker so that its tasks run as the task user, not root.
    for started in (pyinfra_engine.UNIT, pyinfra_engine.SUPERVISE):
        assert f"-m scitq.worker --task-user {pyinfra_engine.TASK_USER}" in started
    # and what the engine passes is the pyinfra engine's, whatever the role defaults say
    passed = ansible_engine.extravars(settings)
    assert passed["scitq_pip_args"] == wanted["pip_args"] and passed["scitq_stop_supervisor"] == wanted["stop"]
    assert (passed["scitq_venv"], passed["scitq_env_file"], passed["scitq_unit_file"]) == (
        pyinfra_engine.VENV, pyinfra_engine.ENV_FILE, pyinfra_engine.UNIT_FILE)
    assert [passed["scitq_task_user"], passed["scitq_task_home"], passed["scitq_task_shell"]] == task_user


def test_deploys_in_threads_each_report_their_own_host(nothing_left_here):
    """The server runs each deploy in a job thread: two at once, each with its own log and error."""
    settings = WorkerSettings(server_url="http://127.0.0.1:9", wheelhouse_url="http://127.0.0.1:9/", name="w")
    logs = {port: [] for port in (1, 2)}

    def deploy(port):
        try:
            bootstrap(Target("127.0.0.1", port=port), settings, logs[port].append)
        except DeployError as exc:
            return str(exc)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        errors = dict(zip(logs, pool.map(deploy, logs)))
    for port, error in errors.items():
        assert error.startswith(f"cannot reach 127.0.0.1:{port} over SSH: ") and f"port {port}: " in error
        assert any("PLAY RECAP" in line for line in logs[port])

    # In the main thread, ansible-runner leaves the process's signal handlers alone.
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(DeployError, match="cannot reach 127.0.0.1:1 over SSH"):
        ansible_engine.teardown(Target("127.0.0.1", port=1), log=lambda line: None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_playbooks_are_found_and_a_missing_ansible_runner_names_the_extra(monkeypatch):
    found = ansible_engine.playbooks_dir()
    assert (found / "worker.yml").is_file() and (found / "roles" / "scitq_teardown" / "tasks" / "main.yml").is_file()
    monkeypatch.setitem(sys.modules, "ansible_runner", None)        # import fails
    settings = WorkerSettings(server_url="http://10.0.0.1:5000", wheelhouse_url="http://10.0.0.1:5000/w/", name="w")
    with pytest.raises(DeployError, match=r"ansible_runner is not installed: pip install 'scitq\[ansible\]'"):
        ansible_engine.bootstrap(Target(UNUSED), settings, log=print)
    with pytest.raises(DeployError, match=r"scitq\[ansible\]"):
        ansible_engine.teardown(Target(UNUSED), log=print)


def test_extravars_read_back_by_ansible_as_written():
    """Ansible's own YAML loader reads each value back: strings (the empty one too) stay strings."""
    from ansible.parsing.yaml.loader import AnsibleLoader
    import yaml
    settings = WorkerSettings(server_url="https://10.0.0.1:5000", wheelhouse_url="https://10.0.0.1:5000/wheelhouse/",
                              name="w1", token="a{{ b }}", ca_pem=None, extra_env={"N": 3, "E": ""})
    variables = ansible_engine.extravars(settings)
    text = "".join(f"{json.dumps(k)}: {ansible_engine._unsafe_yaml(v)}\n" for k, v in variables.items())
    loaded = yaml.load(text, Loader=AnsibleLoader)
    assert loaded["scitq_ca_pem"] == "" and loaded["scitq_batch"] == ""      # 2.19 read `!unsafe ""` as None
    assert loaded["scitq_token"] == "a{{ b }}"
    assert loaded["scitq_extra_env"] == {"N": 3, "E": ""}
    assert {key: str(value) for key, value in loaded.items()} == {key: str(value) for key, value in variables.items()}
