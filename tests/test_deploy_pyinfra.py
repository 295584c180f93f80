"""Deploy with pyinfra: two `local` hosts (Debian, systemd, sshd; no package index) made
workers of a real server over SSH, on each database. Then idempotence (two deploys at once,
in threads, as the server's jobs run them), a settings change, teardown, and the errors of a
host that cannot be reached, a missing wheelhouse and a server the worker cannot reach.

Host a runs the worker under systemd; host b under the supervisor loop (the engine is told
systemd is not there), so both ways are tested. The hosts reach this machine only at the
bridge address: the server listens there, and so does a small HTTP server for the
wheelhouse (which the scitq server is to serve at /wheelhouse/).

Needs root and what the local provider needs; in CI (CI=true) nothing here skips.
"""
import concurrent.futures
import os
import subprocess
import threading
import time
import zipfile
from urllib.parse import urlsplit

import pytest
from packaging.utils import canonicalize_name
from procs import wait_until
from hosts import delete_hosts, local_provider, make_ssh_key, serving

import scitq
from scitq.client import Client
from scitq.deploy import REMOTE_ROOT, SERVICE, DeployError, Target, WorkerSettings, bootstrap, teardown, wheelhouse
from scitq.deploy import pyinfra_engine
from scitq.providers import InstanceSpec
from scitq.worker import __main__ as worker_main

# A run dir, bridge and subnet of this module's own, so it never meets hosts made by anything else.
CONFIG = {"run_dir": "/run/scitq/test-deploy-pyinfra", "bridge": "scitqbrdp",
          "subnet": "10.213.13.0/24", "max_hosts": 2}
TOKEN = "t0ken-of-the-test"
UNUSED = "10.213.13.254"        # in the subnet, on the bridge, never given to a host
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
       "-o", "ControlMaster=no", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


@pytest.fixture(scope="module")
def provider():
    p = local_provider(CONFIG)
    p.image()
    try:
        yield p
    finally:
        delete_hosts(p)


@pytest.fixture
def ssh_key(tmp_path):
    return make_ssh_key(tmp_path / "id_ed25519")


@pytest.fixture
def hosts(provider, ssh_key):
    """Two fresh hosts with the key; deleted after the test, passed or failed."""
    try:
        yield [provider.create(InstanceSpec(name=f"dp{os.getpid() % 100000}-{x}", flavor="local-2", region="local",
                                            ssh_public_key=ssh_key.with_suffix(".pub").read_text()))
               for x in "ab"]
    finally:
        delete_hosts(provider)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    path = tmp_path_factory.mktemp("wheelhouse")
    started = time.monotonic()
    files = wheelhouse.build(path)
    print(f"\nwheelhouse: {len(files)} wheels in {time.monotonic() - started:.1f} s")
    return path


@pytest.fixture
def wheelhouse_url(provider, hosts, wheels):
    """The wheelhouse over HTTP at the bridge address (which exists while hosts do)."""
    with serving(provider.bridge_address, wheels) as url:
        yield url


def ssh(key, ip, command, check=True):
    proc = subprocess.run([*SSH, "-i", str(key), f"root@{ip}", command], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"ssh {ip} {command!r}: {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def test_bootstrap_run_change_and_teardown(db_url, procs, provider, hosts, wheelhouse_url, ssh_key, monkeypatch):
    a, b = hosts
    # On the bridge, not loopback: TLS of the server's own CA, which each host pins.
    server = procs.server(db_url, "--host", provider.bridge_address, "--insecure")
    server_url = f"https://{provider.bridge_address}:{urlsplit(server.url).port}"
    ca = procs.tmp / "data" / "tls" / "ca.pem"
    settings = {h.name: WorkerSettings(server_url=server_url, wheelhouse_url=wheelhouse_url, name=h.name,
                                       concurrency=c, prefetch=1, token=TOKEN, ca_pem=ca.read_text())
                for h, c in ((a, 3), (b, 2))}
    targets = {h.name: Target(h.ip, key=str(ssh_key)) for h in hosts}
    logs = {h.name: [] for h in hosts}
    # Host b has systemd too: the engine is told it has not, there only (safe across threads).
    monkeypatch.setattr(pyinfra_engine.SystemdIsInit, "command", lambda self: (
        f"test -d /run/systemd/system && [ $(hostname) != {b.name} ] && echo yes || echo no"))

    def deploy(h, **changes):
        for key, value in changes.items():
            setattr(settings[h.name], key, value)
        return timed(bootstrap, targets[h.name], settings[h.name], log=logs[h.name].append)

    timings = {}
    for h in hosts:
        changed, timings[h.name, "first"] = deploy(h)
        assert changed is True
    assert any("Starting operation" in line for line in logs[a.name])
    assert any("Successfully installed" in line and "httpx" in line for line in logs[a.name])
    assert any("worker supervised by systemd" in line for line in logs[a.name])
    assert any(f"worker supervised by {REMOTE_ROOT}/supervise.sh" in line for line in logs[b.name])
    assert not any(TOKEN in line for lines in logs.values() for line in lines)

    assert ssh(ssh_key, a.ip, f"cat {pyinfra_engine.CA_FILE}") == ca.read_text().strip()
    assert f"SCITQ_CA='{pyinfra_engine.CA_FILE}'" in ssh(ssh_key, a.ip, f"cat {pyinfra_engine.ENV_FILE}")
    with Client(server_url, ca=str(ca)) as client:
        workers = {w["name"]: w for w in client.workers()}
        assert {n: (w["status"], w["concurrency"], w["prefetch"], w["hostname"]) for n, w in workers.items()} == {
            a.name: ("running", 3, 1, a.name), b.name: ("running", 2, 1, b.name)}

        ids = client.add_tasks([{"command": "sleep 0.3; hostname"} for _ in range(20)], batch="hosts")
        summary = client.wait_batch("hosts", interval=0.5, timeout=120)
        assert summary["counts"]["succeeded"] == 20
        outputs = {client.output(tid)[0].decode().strip() for tid in ids}
        assert outputs == {a.name, b.name}

        # A second bootstrap changes nothing, and says so; both at once, as the server's job
        # threads would run them, each with a log of its own host only.
        for h in hosts:
            logs[h.name].clear()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            second = {h.name: pool.submit(deploy, h) for h in hosts}
        for h in hosts:
            changed, timings[h.name, "second"] = second[h.name].result()
            assert changed is False, logs[h.name]
            assert any("No changes" in line for line in logs[h.name])
            assert not any("] Success" in line for line in logs[h.name]), logs[h.name]
            other = b if h is a else a
            assert not any(f"[{other.ip}]" in line for line in logs[h.name])

        # New settings: the config changes, and the worker restarts with them.
        for h in hosts:
            before = ssh(ssh_key, h.ip, "pgrep -f '[p]ython -m scitq.worker'")
            changed, timings[h.name, "change"] = deploy(h, concurrency=4)
            assert changed is True
            wait_until(lambda: client.worker(h.name)["concurrency"] == 4, 30, what=f"{h.name} re-registered")
            assert client.worker(h.name)["status"] == "running"
            assert ssh(ssh_key, h.ip, "pgrep -f '[p]ython -m scitq.worker'") != before
        assert ssh(ssh_key, a.ip, f"systemctl is-active {SERVICE}") == "active"
        assert ssh(ssh_key, a.ip, f"systemctl is-enabled {SERVICE}") == "enabled"
        assert ssh(ssh_key, a.ip, f"stat -c %a {REMOTE_ROOT}/worker.env") == "600"
        for h in hosts:     # its tasks run as the task user, who cannot read REMOTE_ROOT
            assert ssh(ssh_key, h.ip, f"stat -c '%U %a' {pyinfra_engine.TASK_HOME} {REMOTE_ROOT}").splitlines() == [
                f"{pyinfra_engine.TASK_USER} 700", "root 700"]
            assert f"--task-user {pyinfra_engine.TASK_USER}" in ssh(ssh_key, h.ip, "pgrep -af '[p]ython -m scitq.worker'")
        assert ssh(ssh_key, b.ip, f"test -e /etc/systemd/system/{SERVICE}.service && echo yes || echo no") == "no"

        # Nothing but httpx and its dependencies next to scitq: no click, rich, flask.
        freeze = ssh(ssh_key, a.ip, f"{REMOTE_ROOT}/venv/bin/pip freeze").lower().split()
        names = {line.split("==")[0] for line in freeze}
        assert {"scitq", "httpx"} <= names and not names & {"click", "rich", "flask", "sqlalchemy"}

        # The supervisor restarts a worker that dies, as systemd does.
        pid = ssh(ssh_key, b.ip, "pgrep -f '[p]ython -m scitq.worker'")
        ssh(ssh_key, b.ip, f"kill -9 {pid}")
        wait_until(lambda: ssh(ssh_key, b.ip, "pgrep -f '[p]ython -m scitq.worker' || true") not in ("", pid),
                   30, what="the supervisor to restart the worker")

    for h in hosts:
        changed, timings[h.name, "teardown"] = timed(teardown, targets[h.name], log=logs[h.name].append)
        assert changed is True
        assert teardown(targets[h.name], log=logs[h.name].append) is False      # idempotent
        left = ssh(ssh_key, h.ip,
                   f"ls -d {REMOTE_ROOT} /etc/systemd/system/{SERVICE}.service "
                   f"/etc/systemd/system/multi-user.target.wants/{SERVICE}.service "
                   f"{pyinfra_engine.WORKDIR} {pyinfra_engine.TASK_HOME} 2>/dev/null; "
                   f"getent passwd {pyinfra_engine.TASK_USER}; "
                   "pgrep -af '[s]citq[.]worker|[s]upervise[.]sh' || true")
        assert left == "", f"left on {h.name}: {left}"
    assert ssh(ssh_key, a.ip, f"systemctl is-active {SERVICE} || true") in ("inactive", "unknown")
    assert [t for t in threading.enumerate() if type(t).__name__ == "Transport"] == []   # SSH closed

    print("\n" + "\n".join(f"{name} {what}: {seconds:.1f} s" for (name, what), seconds in timings.items()))


def test_failures_say_what_failed_where(provider, hosts, wheelhouse_url, ssh_key, monkeypatch):
    a, b = hosts
    dead = f"http://{provider.bridge_address}:9"        # this machine, where nothing listens
    settings = WorkerSettings(server_url=dead, wheelhouse_url=wheelhouse_url, name="nowhere")

    # An address nobody answers (on the bridge, so the packets stay on this machine).
    started = time.monotonic()
    with pytest.raises(DeployError, match=rf"cannot reach {UNUSED}:22 over SSH") as err:
        bootstrap(Target(UNUSED), settings, log=lambda line: None)
    seconds = time.monotonic() - started
    assert seconds < 15
    started = time.monotonic()
    with pytest.raises(DeployError, match=rf"cannot reach {UNUSED}:22 over SSH"):
        teardown(Target(UNUSED), log=lambda line: None)
    assert time.monotonic() - started < 15
    print(f"\nunreachable, after {seconds:.1f} s: {err.value}")

    # No wheelhouse there: the pip operation fails, in pip's words.
    broken = WorkerSettings(server_url=dead, wheelhouse_url=f"{dead}/wheelhouse/", name=a.name)
    started = time.monotonic()
    with pytest.raises(DeployError, match=rf"scitq {scitq.__version__} from the wheelhouse failed on {a.ip}: "
                                          ".*No matching distribution"):
        bootstrap(Target(a.ip, key=str(ssh_key)), broken, log=lambda line: None)
    print(f"no wheelhouse: {time.monotonic() - started:.1f} s")

    # A server the worker cannot reach: it never registers; the error ends with its log.
    monkeypatch.setattr(pyinfra_engine, "REGISTER_TIMEOUT", 5)
    lonely = WorkerSettings(server_url=dead, wheelhouse_url=wheelhouse_url, name=b.name)
    with pytest.raises(DeployError, match=rf"worker {b.name} did not register on {dead} within 5 s") as err:
        bootstrap(Target(b.ip, key=str(ssh_key)), lonely, log=lambda line: None)
    assert "POST /workers failed" in str(err.value)
    # It would retry for ever, and drain for as long (TimeoutStopSec): stop it now.
    ssh(ssh_key, b.ip, f"systemctl kill -s KILL {SERVICE}; systemctl stop {SERVICE}")


# --- without hosts ---------------------------------------------------------------------

def test_wheelhouse_holds_a_worker_only_scitq_and_is_cached(wheels, monkeypatch):
    names = sorted(p.name for p in wheels.glob("*.whl"))
    wanted = {canonicalize_name(name) for name, _version in wheelhouse.worker_requirements()}
    assert {canonicalize_name(n.split("-")[0]) for n in names} == wanted | {"scitq"} and "httpx" in wanted
    scitq_wheel = wheels / f"scitq-{scitq.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(scitq_wheel) as whl:
        metadata = whl.read(f"scitq-{scitq.__version__}.dist-info/METADATA").decode()
        assert "scitq/worker/__main__.py" in whl.namelist()
        assert not [n for n in whl.namelist() if "__pycache__" in n]
    assert [line for line in metadata.splitlines() if line.startswith("Requires-Dist")] == [
        "Requires-Dist: httpx>=0.27"]
    index = (wheels / "index.html").read_text()
    assert all(f'href="{n}#sha256=' in index for n in names)

    monkeypatch.setattr(wheelhouse, "_download", lambda *a: pytest.fail("downloaded again"))
    before = scitq_wheel.read_bytes()
    assert len(wheelhouse.build(wheels)) == len(names)
    assert scitq_wheel.read_bytes() == before            # the same code gives the same wheel


def test_worker_settings_file_and_the_worker_command_line():
    settings = WorkerSettings(server_url="http://10.0.0.1:5000", wheelhouse_url="http://10.0.0.1:5000/wheelhouse/",
                              name="w1", concurrency=4, prefetch=2, token="s3cret", extra_env={"TMPDIR": "/scratch"})
    text = pyinfra_engine.worker_env(settings)
    env = dict(line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    assert env["SCITQ_TOKEN"] == "'s3cret'" and env["SCITQ_BATCH"] == "''" and env["TMPDIR"] == "'/scratch'"
    parsed = subprocess.run(["sh", "-c", "set -a; . /dev/stdin; exec env"], input=text, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert "SCITQ_CONCURRENCY=4" in parsed and "SCITQ_SERVER=http://10.0.0.1:5000" in parsed
    args = worker_main.parser({k: v.strip("'") for k, v in env.items()}).parse_args([])
    assert (args.url, args.concurrency, args.prefetch, args.name, args.batch) == ("http://10.0.0.1:5000", 4, 2, "w1", None)
    assert worker_main.parser({}).parse_args(["http://x", "-c", "2"]).concurrency == 2
    # The unit starts it with its tasks run as the task user; SCITQ_TASK_USER says the same.
    exec_start = next(line for line in pyinfra_engine.UNIT.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[1:3] == ["-m", "scitq.worker"]
    started = worker_main.parser({"SCITQ_SERVER": "http://x"}).parse_args(exec_start.split()[3:])
    assert started.task_user == pyinfra_engine.TASK_USER == "scitq-task"
    assert worker_main.parser({"SCITQ_TASK_USER": "u"}).parse_args(["http://x"]).task_user == "u"
    for bad in ("it's", "two\nlines", "back\\slash"):
        settings.token = bad
        with pytest.raises(DeployError):
            pyinfra_engine.worker_env(settings)
