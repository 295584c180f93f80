"""Acceptance 3 of the provider issue: the `scitq provider` CLI, through a real server,
creating and deleting real `local` hosts, and listing OVH flavors with prices from the fake."""
import json
import subprocess
import sys

import pytest
import yaml
from hosts import delete_hosts, local_provider


LOCAL = {"run_dir": "/run/scitq/test-provider-cli", "bridge": "scitqbrcli",
         "subnet": "10.213.11.0/24", "max_hosts": 2}


def scitq(url, *args):
    return subprocess.run([sys.executable, "-m", "scitq.cli", "--server", url, *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def local_hosts():
    """The CLI's hosts are made by the server process; whatever a failed test leaves, this
    deletes through the same provider state."""
    provider = local_provider(LOCAL)
    try:
        yield provider
    finally:
        delete_hosts(provider)


def test_cli_creates_lists_and_deletes_local_hosts(db_url, procs, tmp_path, local_hosts):
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"local": LOCAL}))
    server = procs.server(db_url, "--providers", str(conf))

    listed = scitq(server.url, "provider", "list", "--json")
    assert {p["name"]: p["error"] for p in json.loads(listed.stdout)}["local"] is None
    flavors = scitq(server.url, "provider", "flavors", "local")
    assert flavors.returncode == 0 and "local-2" in flavors.stdout

    made = scitq(server.url, "provider", "create", "local", "--flavor", "local-1",
                 "--region", "local", "--count", "2", "--json")
    assert made.returncode == 0, made.stderr
    hosts = json.loads(made.stdout)
    assert len({h["ip"] for h in hosts}) == 2 and all(h["status"] == "running" for h in hosts)

    key = tmp_path / "data" / "ssh" / "id_ed25519"        # the server's own key is on them
    for h in hosts:
        out = subprocess.run(["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                              "-o", "ControlMaster=no", "-o", "LogLevel=ERROR",
                              f"{h['user']}@{h['ip']}", "hostname"],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0 and out.stdout.strip() == h["name"], out.stderr

    table = scitq(server.url, "provider", "instances", "local")
    assert all(h["id"] in table.stdout for h in hosts)
    deleted = scitq(server.url, "provider", "delete", "local", *[h["id"] for h in hosts])
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(scitq(server.url, "provider", "instances", "local", "--json").stdout) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(h["id"] in netns for h in hosts)
    assert "scitqbrcli" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_cli_lists_ovh_flavors_with_prices_from_the_fake(db_url, procs, tmp_path):
    from fakes.openstack import FakeOpenStack
    with FakeOpenStack() as fake:
        settings = fake.provider_config()
        settings["endpoint"] = fake.url + "/1.0"        # the server is another process
        conf = tmp_path / "providers.yaml"
        conf.write_text(yaml.safe_dump({"ovh": settings}))
        server = procs.server(db_url, "--providers", str(conf))
        out = scitq(server.url, "provider", "flavors", "ovh", "--json")
        assert out.returncode == 0, out.stderr
        flavors = json.loads(out.stdout)
        assert flavors and all(f["provider"] == "ovh" for f in flavors)
        priced = [f for f in flavors if f["hourly_cost"] is not None]
        assert priced and all(f["hourly_cost"] > 0 for f in priced)
        assert [f["hourly_cost"] for f in priced] == sorted(f["hourly_cost"] for f in priced)
        table = scitq(server.url, "provider", "flavors", "ovh", "--min-cpu", "4")
        assert table.returncode == 0 and "per hour" in table.stdout
        assert f"{min(f['hourly_cost'] for f in priced if f['cpu'] >= 4):.4f}" in table.stdout
        regions = scitq(server.url, "provider", "regions", "ovh")
        assert regions.returncode == 0 and set(regions.stdout.split()) == set(fake.regions)


def test_cli_says_in_one_line_when_ovh_credentials_are_wrong(db_url, procs, tmp_path):
    from fakes.openstack import FakeOpenStack
    with FakeOpenStack() as fake:
        settings = fake.provider_config()
        settings["endpoint"] = fake.url + "/1.0"
        settings["auth"] = fake.auth(password="wrong")
        conf = tmp_path / "providers.yaml"
        conf.write_text(yaml.safe_dump({"ovh": settings}))
        server = procs.server(db_url, "--providers", str(conf))
        bad = scitq(server.url, "provider", "regions", "ovh")
        assert bad.returncode == 2, (bad.stdout, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("error: ")
