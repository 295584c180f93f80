"""Recruitment end to end with the `local` provider (systemd-nspawn hosts in network namespaces
of their own), through a real server on both databases: a recruiter rents 3 hosts, they are
bootstrapped into workers, run a batch of 60 tasks, serve a second batch without any new host
(reuse), and are deleted once idle, their cost closed; nothing is left behind.

The server listens on every address, so it serves TLS of its own CA: each host pins it, the
workers talk https, and the traffic on the provider's bridge holds no token in the clear."""
import contextlib
import re
import signal
import subprocess
import sys
from datetime import datetime

import pytest
import yaml

from hosts import local_hosts
from procs import wait_until
from scitq.client import Client

LOCAL = {"run_dir": "/run/scitq/test-recruit", "bridge": "scitqbrr", "subnet": "10.213.19.0/24",
         "max_hosts": 3, "price_per_cpu": 0.05}
IDLE = 6.0          # seconds a host may idle
TICK = 1.0          # seconds between recruitment passes


def scitq(url, *args, token, ca):
    return subprocess.run([sys.executable, "-m", "scitq.cli", "--server", url, "--token", token, "--ca", ca, *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def local():
    with local_hosts(LOCAL) as provider:
        yield provider


def netns_left():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("scitq-scitq-local-")]


def at(value):
    return datetime.fromisoformat(value)


@contextlib.contextmanager
def capture(path, subnet):
    """tcpdump of the packets to and from the bridge's subnet (the hosts' traffic alone)."""
    proc = subprocess.Popen(["tcpdump", "-i", "any", "-U", "-s", "0", "-Z", "root", "-w", str(path), "net", subnet],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # It says "listening on any" once it captures.
        said = [proc.stderr.readline().decode() for _ in range(2)]
        assert any("listening" in line for line in said), said
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def packets_to(path, port):
    out = subprocess.run(["tcpdump", "-r", str(path), "-nn", f"tcp port {port}"], capture_output=True, text=True)
    return len(out.stdout.splitlines())


def test_a_recruiter_rents_reuses_and_returns_local_hosts(db_url, procs, tmp_path, local):
    wire = tmp_path / "bridge.pcap"
    with capture(wire, LOCAL["subnet"]):
        hosts, tokens, port = recruit_and_return(db_url, procs, tmp_path, local)
    # Worker and server spoke (https) on the bridge, and no token crossed it in the clear.
    assert packets_to(wire, port) > 100
    traffic = wire.read_bytes()
    assert b"Bearer" not in traffic and b"/api/v1/" not in traffic
    assert not re.search(rb"scitq_[A-Za-z0-9_-]{40}", traffic)
    assert len(tokens) >= 3 and not [t for t in tokens if t["prefix"].encode() in traffic]


def recruit_and_return(db_url, procs, tmp_path, local):
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"local": LOCAL}))
    # Every address: the bridge the hosts reach us on is made with the first host.
    # With auth on: the deploys give each host a worker token of its own.
    server = procs.server(db_url, "--providers", str(conf), "--host", "0.0.0.0", "--auth",
                          "--recruit-tick", str(TICK), "--job-backoff", "1")
    assert server.url.startswith("https://")
    port = int(server.url.rsplit(":", 1)[1])
    url = f"https://127.0.0.1:{port}"
    ca = str(tmp_path / "data" / "tls" / "ca.pem")
    admin = (tmp_path / "data" / "admin.token").read_text().strip()
    c = Client(url, token=admin, ca=ca)
    ids = c.add_tasks([{"command": f"sleep 0.5; echo $(hostname) {i}"} for i in range(60)], batch="first")
    out = scitq(url, "recruiter", "add", "first", "--provider", "local", "--flavor", "local-2",
                "--max-workers", "3", "--tasks-per-worker", "20", "--concurrency", "2",
                "--idle-timeout", str(IDLE), token=admin, ca=ca)
    assert out.returncode == 0, out.stderr

    first = c.wait_batch("first", interval=0.5, timeout=600)
    assert first["counts"]["succeeded"] == 60
    hosts = {i["name"]: i for i in c.iter_instances()}
    assert len(hosts) == 3 and {i["flavor"] for i in hosts.values()} == {"local-2"}
    wait_until(lambda: {w["name"] for w in c.workers()} == set(hosts), 120, 0.5,
               "all 3 hosts bootstrapped into workers")
    assert {c.task(t)["executions"][-1]["worker"] for t in ids} <= set(hosts)
    assert {c.output(t)[0].split()[0].decode() for t in ids} <= set(hosts)

    # While the first batch's hosts idle, a second batch takes them: no new host.
    more = c.add_tasks([{"command": "echo again"} for _ in range(9)], batch="second")
    out = scitq(url, "recruiter", "add", "second", "--provider", "local", "--flavor", "local-2",
                "--max-workers", "3", "--tasks-per-worker", "3", "--concurrency", "2",
                "--idle-timeout", str(IDLE), token=admin, ca=ca)
    assert out.returncode == 0, out.stderr
    assert c.wait_batch("second", interval=0.5, timeout=120)["counts"]["succeeded"] == 9
    assert {c.task(t)["executions"][-1]["worker"] for t in more} <= set(hosts)
    assert {i["name"] for i in c.iter_instances()} == set(hosts)

    # Drained: every host goes within the idle timeout and a tick (and the delete itself).
    drained = max(at(c.task(t)["executions"][-1]["ended_at"]) for t in ids + more)
    wait_until(lambda: all(i["status"] == "deleted" for i in c.iter_instances()),
               IDLE + 60, 0.5, "the hosts to be deleted")
    gone = list(c.iter_instances())
    for inst in gone:
        assert inst["cost"] > 0 and inst["hourly_cost"] == pytest.approx(0.1)
        lifetime = (at(inst["deleted_at"]) - at(inst["created_at"])).total_seconds()
        assert inst["cost"] == pytest.approx(0.1 * lifetime / 3600, rel=1e-3)
        assert (at(inst["deleted_at"]) - drained).total_seconds() <= IDLE + TICK + 5
    assert local.list() == [] and netns_left() == []
    cost = c.batch_cost("second")
    assert cost["hosts"] == 0 and cost["spent"] > 0
    jobs = c.jobs(limit=100)["items"]
    assert sorted(j["kind"] for j in jobs) == ["create"] * 3 + ["delete"] * 3 + ["deploy"] * 3
    assert all(j["status"] == "succeeded" for j in jobs)
    # Each host's worker had a token of its own, and no log shows one.
    names = {t["name"] for t in c.tokens(revoked=True)}
    assert {f"worker:{h}" for h in hosts} <= names
    for j in jobs:
        assert not re.search(r"scitq_[A-Za-z0-9_-]{40}", c.job_log(j["id"])[0].decode())
    assert admin not in (tmp_path / "server.log").read_text()
    # Each host was told the server's https address on its bridge, and pinned its CA.
    for j in jobs:
        if j["kind"] == "deploy":
            assert f"https://{local.bridge_address}:{port}" in c.job_log(j["id"])[0].decode()
    workers = [t for t in c.tokens(revoked=True) if t["name"].startswith("worker:")]
    c.close()
    return hosts, workers, port


def test_scitq_up_rents_local_hosts_with_no_other_flag(db_url, procs, tmp_path, local):
    """`scitq up` listens on loopback; it serves the local provider's bridge too (over TLS of
    its own CA) and tells its hosts that address: a recruiter needs nothing more."""
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"local": LOCAL}))
    up = procs.server(db_url, "--providers", str(conf), "--recruit-tick", str(TICK), "--concurrency", "1",
                      command="up")
    assert up.url.startswith("http://127.0.0.1:")
    port = int(up.url.rsplit(":", 1)[1])
    admin = (tmp_path / "data" / "admin.token").read_text().strip()
    c = Client(up.url, token=admin)
    ids = c.add_tasks([{"command": "sleep 1; hostname"} for _ in range(40)], batch="up")
    out = scitq(up.url, "recruiter", "add", "up", "--provider", "local", "--flavor", "local-2",
                "--max-workers", "2", "--tasks-per-worker", "10", "--concurrency", "2",
                "--idle-timeout", str(IDLE), token=admin, ca=str(tmp_path / "data" / "tls" / "ca.pem"))
    assert out.returncode == 0, out.stderr
    assert c.wait_batch("up", interval=0.5, timeout=600)["counts"]["succeeded"] == 40
    hosts = {i["name"] for i in c.iter_instances()}
    assert hosts and {w["name"] for w in c.workers()} >= hosts
    ran_on = {c.task(t)["executions"][-1]["worker"] for t in ids}
    assert ran_on & hosts
    for j in c.jobs(kind="deploy")["items"]:
        assert j["status"] == "succeeded"
        assert f"https://{local.bridge_address}:{port}" in c.job_log(j["id"])[0].decode()
    wait_until(lambda: all(i["status"] == "deleted" for i in c.iter_instances()), IDLE + 60, 0.5,
               "the hosts to be deleted")
    assert all(i["cost"] > 0 for i in c.iter_instances())
    assert local.list() == [] and netns_left() == []
    c.close()
