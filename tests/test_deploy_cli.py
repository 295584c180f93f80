"""Deploys as users run them: `scitq provider create local` makes a host with the server's
key, `scitq deploy` turns it into a worker through a job (wheelhouse served by the server
itself), tasks run there, `scitq undeploy` takes it away. And a host that cannot be reached
fails its job with a clear log line after the attempts the policy allows."""
import json
import subprocess
import sys

import pytest
import yaml
from hosts import local_hosts

from procs import wait_until
from scitq.client import Client

LOCAL = {"run_dir": "/run/scitq/test-deploy-cli", "bridge": "scitqbrdc",
         "subnet": "10.213.17.0/24", "max_hosts": 1}


def scitq(url, *args, timeout=300, ca=None):
    return subprocess.run([sys.executable, "-m", "scitq.cli", "--server", url, *(["--ca", ca] if ca else []), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def local():
    with local_hosts(LOCAL) as provider:
        yield provider


def test_provider_host_to_worker_and_back(db_url, procs, tmp_path, local):
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"local": LOCAL}))
    # Listening on every address: the bridge the host will reach us on does not exist yet.
    server = procs.server(db_url, "--providers", str(conf), "--host", "0.0.0.0", "--insecure")
    port = server.url.rsplit(":", 1)[1]
    url = f"https://127.0.0.1:{port}"       # every address, not loopback alone: TLS
    ca = str(tmp_path / "data" / "tls" / "ca.pem")

    made = scitq(url, "provider", "create", "local", "--flavor", "local-2", "--region", "local", "--json", ca=ca)
    assert made.returncode == 0, made.stderr
    (host,) = json.loads(made.stdout)
    reach_me = f"https://{local.bridge_address}:{port}"

    deployed = scitq(url, "deploy", host["ip"], "--concurrency", "2", "--server-url", reach_me, ca=ca)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    with Client(url, ca=ca) as client:
        (worker,) = client.workers()
        assert (worker["name"], worker["concurrency"], worker["status"]) == (host["ip"], 2, "running")
        ids = client.add_tasks([{"command": "hostname; echo $CPU"} for _ in range(6)], batch="remote")
        summary = client.wait_batch("remote", interval=0.3, timeout=120)
        assert summary["counts"]["succeeded"] == 6
        assert {client.output(t)[0].decode().split()[0] for t in ids} == {host["name"]}

        (job,) = client.jobs(kind="deploy")["items"]
        log = client.job_log(job["id"])[0].decode()
        assert "wheelhouse:" in log and "is up" in log and job["attempts"] == 1
        assert "--cert" in log or "the server's CA certificate" in log

        again = scitq(url, "deploy", host["ip"], "--concurrency", "2", "--server-url", reach_me, ca=ca)
        assert again.returncode == 0
        second = client.jobs(kind="deploy")["items"][0]
        assert "(no change)" in client.job_log(second["id"])[0].decode()

        gone = scitq(url, "undeploy", host["ip"], ca=ca)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        wait_until(lambda: client.worker(host["ip"])["status"] == "offline", 60, what="worker offline")

    assert scitq(url, "provider", "delete", "local", host["id"], ca=ca).returncode == 0


def test_an_unreachable_host_fails_its_job_after_its_attempts(db_url, procs):
    server = procs.server(db_url, "--job-backoff", "0.2")
    # Port 1 on loopback: refused at once, and no traffic leaves this machine.
    out = scitq(server.url, "deploy", "127.0.0.1", "--port", "1", "--attempts", "2",
                "--server-url", server.url)
    assert out.returncode == 1
    assert "failed" in out.stdout and "see `scitq job log ID`" in out.stderr
    (job,) = json.loads(scitq(server.url, "job", "list", "--json").stdout)
    assert (job["status"], job["attempts"], job["max_attempts"]) == ("failed", 2, 2)
    assert "cannot reach 127.0.0.1:1" in job["error"]
    log = scitq(server.url, "job", "log", str(job["id"])).stdout
    assert log.count("cannot reach 127.0.0.1:1") >= 2 and "no attempt left" in log
    assert log.index("attempt 1 of 2") < log.index("attempt 2 of 2")
