"""Reachability known before money is spent: a recruiter, `provider create` and `deploy` are
refused, one line naming --public-url, when the hosts could not reach the URL the server
would tell them (none at all, or a loopback one for hosts that are not on loopback)."""
import subprocess
import sys

import pytest
import yaml

from scitq.server import create_app

PROVIDERS = {"static": {"hosts": [{"name": "lab1", "address": "192.0.2.10", "cpu": 8, "ram": 32, "disk": 100}]}}
RECRUITER = {"batch": "align", "provider": "static", "flavor": "static-8c", "max_workers": 2,
             "tasks_per_worker": 10, "concurrency": 4}


@pytest.fixture(params=[None, "http://127.0.0.1:5000"], ids=["no-url", "loopback-url"])
def client(request, db_url, tmp_path):
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "PROVIDERS": PROVIDERS,
                      **({"PUBLIC_URL": request.param} if request.param else {})})
    yield app.test_client()
    app.extensions["scitq"].db.dispose()


def one_line_naming_public_url(r):
    assert r.status_code == 400, r.get_json()
    message = r.get_json()["error"]
    assert "\n" not in message and "--public-url" in message and "cannot reach this server" in message
    return message


def test_nothing_is_rented_nor_deployed_for_hosts_that_cannot_reach_the_server(client):
    one_line_naming_public_url(client.post("/api/v1/recruiters", json=RECRUITER))
    assert client.get("/api/v1/recruiters").get_json() == []
    one_line_naming_public_url(client.post("/api/v1/providers/static/instances",
                                           json={"flavor": "static-8c", "region": "lab"}))
    assert client.get("/api/v1/instances").get_json()["items"] == []
    message = one_line_naming_public_url(client.post("/api/v1/jobs/deploy", json={"hosts": ["192.0.2.10"]}))
    loopback = client.post("/api/v1/jobs/deploy", json={"hosts": ["192.0.2.10"],
                                                        "server_url": "http://localhost:5000"})
    assert "loopback" in one_line_naming_public_url(loopback)
    assert client.get("/api/v1/jobs").get_json()["items"] == []
    assert message


def test_a_loopback_url_is_fine_for_a_deploy_to_loopback_and_a_reachable_one_for_all(db_url, tmp_path):
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "PROVIDERS": PROVIDERS,
                      "PUBLIC_URL": "https://scitq.example:5000"})
    try:
        c = app.test_client()
        r = c.post("/api/v1/jobs/deploy", json={"hosts": ["127.0.0.1"], "server_url": "http://127.0.0.1:5000"})
        assert r.status_code == 201, r.get_json()
        assert c.post("/api/v1/recruiters", json=RECRUITER).status_code == 201
    finally:
        app.extensions["scitq"].db.dispose()


def test_recruiter_add_on_a_loopback_server_exits_2_with_one_line(db_url, procs, tmp_path):
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump(PROVIDERS))
    server = procs.server(db_url, "--providers", str(conf))
    out = subprocess.run([sys.executable, "-m", "scitq.cli", "--server", server.url, "recruiter", "add", "align",
                          "--provider", "static", "--flavor", "static-8c", "--max-workers", "2", "-k", "10", "-c", "4"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: the hosts of provider static cannot reach this server") and "--public-url" in line
    listed = subprocess.run([sys.executable, "-m", "scitq.cli", "--server", server.url, "recruiter", "list", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and yaml.safe_load(listed.stdout) == []
