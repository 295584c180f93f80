"""The provider layer seen from the server: configuration, the flavor catalog, the API and
CLI, and the `static` provider (existing hosts: recruited and released, never deleted)."""
import json
import subprocess
import sys

import pytest
import yaml

from provider_contract import check_catalog, check_lifecycle
from scitq.errors import BadRequest, CapacityError
from scitq.providers import InstanceSpec, get_provider
from scitq.providers.base import TAG, carries
from scitq.server.providers import load_config

LAB = {"hosts": [
    {"name": "lab1", "address": "127.0.0.11", "cpu": 8, "ram": 32, "cost": 0.2, "region": "lab"},
    {"name": "lab2", "address": "127.0.0.12", "cpu": 8, "ram": 32, "cost": 0.2, "region": "lab"},
    {"name": "gpu1", "address": "127.0.0.13", "cpu": 16, "ram": 64, "gpu": 1, "cost": 1.5,
     "region": "lab", "flavor": "gpu"},
]}
API = "/api/v1"


def static(tmp_path):
    return get_provider("static", dict(LAB, state=str(tmp_path / "static.json")))


def test_one_tag_rule_for_every_provider():
    """list(tags) of every provider: each wanted tag present, with its value unless None;
    values compared as strings (clouds keep strings); no tags: scitq's own instances."""
    ours = {TAG: "w1", "batch": "7"}
    assert carries(ours) and carries(ours, {TAG: None}) and carries(ours, {TAG: "w1", "batch": 7})
    assert not carries({"batch": "7"}) and not carries(ours, {"batch": "8"})
    assert not carries(ours, {"owner": None}) and carries({"owner": ""}, {"owner": None})


def test_static_keeps_the_provider_contract(tmp_path):
    p = static(tmp_path)
    flavors = check_catalog(p, "lab")
    assert {f.name: f.hourly_cost for f in flavors} == {"static-8c": 0.2, "gpu": 1.5}
    check_lifecycle(p, InstanceSpec(name="scitq-t1", flavor="gpu", region="lab"),
                    wait_running=lambda prov, inst: inst)


def test_static_recruits_free_hosts_only_and_survives_a_restart(tmp_path):
    p = static(tmp_path)
    a = p.create(InstanceSpec(name="a", flavor="static-8c", region="lab"))
    b = p.create(InstanceSpec(name="b", flavor="static-8c", region="lab"))
    assert {a.id, b.id} == {"lab1", "lab2"} and a.ip != b.ip
    with pytest.raises(CapacityError):
        p.create(InstanceSpec(name="c", flavor="static-8c", region="lab"))
    again = static(tmp_path)                        # a new server process reads the same state
    assert {i.id for i in again.list()} == {"lab1", "lab2"}
    assert [q.used for q in again.quotas("lab")] == [2]
    again.delete(a.id)                              # released, so it can be recruited again
    assert again.create(InstanceSpec(name="d", flavor="static-8c", region="lab")).id == a.id


def test_static_config_errors_are_clear(tmp_path):
    with pytest.raises(BadRequest, match="'name' and 'address'"):
        get_provider("static", {"hosts": [{"name": "x"}]})
    bad = tmp_path / "providers.yaml"
    bad.write_text("nosuchcloud: {}\n")
    with pytest.raises(BadRequest, match="unknown provider"):
        load_config(bad)
    bad.write_text("static: [1, 2\n")
    with pytest.raises(BadRequest, match="not valid YAML"):
        load_config(bad)


@pytest.fixture
def lab_app(db_url, tmp_path):
    from scitq.server import create_app
    # A URL its hosts could use (never contacted: no deploy runs here), or renting is refused.
    app = create_app({"DATA_DIR": tmp_path, "DATABASE": db_url, "PUBLIC_URL": "https://scitq.example:5000",
                      "PROVIDERS": {"static": dict(LAB, state=str(tmp_path / "static.json"))}})
    yield app
    app.extensions["scitq"].db.dispose()


def test_catalog_refresh_and_filters(lab_app):
    c = lab_app.test_client()
    status = {p["name"]: p for p in c.get(f"{API}/providers").get_json()}
    assert status["static"]["configured"] and status["static"]["error"] is None
    assert not status["ovh"]["configured"]
    assert c.get(f"{API}/providers/flavors").get_json() == []
    assert c.post(f"{API}/providers/static/refresh").get_json() == {"provider": "static", "flavors": 2}
    assert c.post(f"{API}/providers/static/refresh").get_json()["flavors"] == 2   # replaced, not added

    def names(**q):
        r = c.get(f"{API}/providers/flavors", query_string=q)
        assert r.status_code == 200, r.get_json()
        return [f["name"] for f in r.get_json()]
    assert names() == ["static-8c", "gpu"]                     # cheapest first
    assert names(min_cpu=12) == ["gpu"]
    assert names(gpu="true") == ["gpu"] and names(gpu="false") == ["static-8c"]
    assert names(max_cost=1) == ["static-8c"]
    assert names(region="elsewhere") == []
    assert c.get(f"{API}/providers/flavors?min_cpu=-1").status_code == 400


def test_instances_through_the_api(lab_app, tmp_path):
    c = lab_app.test_client()
    r = c.post(f"{API}/providers/static/instances", json={"flavor": "static-8c", "region": "lab", "count": 2})
    assert r.status_code == 201, r.get_json()
    made = r.get_json()
    assert sorted(i["id"] for i in made) == ["lab1", "lab2"]
    assert all(i["status"] == "running" and i["tags"]["scitq"] == i["name"] for i in made)
    assert (tmp_path / "ssh" / "id_ed25519").exists()          # the server's key, made on need
    r = c.post(f"{API}/providers/static/instances", json={"flavor": "static-8c", "region": "lab"})
    assert r.status_code == 409 and "no free host" in r.get_json()["error"]
    assert c.delete(f"{API}/providers/static/instances/lab1").status_code == 200
    assert c.delete(f"{API}/providers/static/instances/lab1").status_code == 200   # idempotent
    assert [i["id"] for i in c.get(f"{API}/providers/static/instances").get_json()] == ["lab2"]
    for bad in ({"region": "lab"}, {"flavor": "x", "region": "lab", "count": 0},
                {"flavor": 3, "region": "lab"}):
        r = c.post(f"{API}/providers/static/instances", json=bad)
        assert r.status_code == 400 and r.get_json()["error"]
    for url in (f"{API}/providers/ovh/regions", f"{API}/providers/nope/instances"):
        r = c.get(url)
        assert r.status_code == 400 and r.get_json()["error"]


def scitq(url, *args):
    return subprocess.run([sys.executable, "-m", "scitq.cli", "--server", url, *args],
                          capture_output=True, text=True, timeout=120)


def test_provider_cli_on_static_hosts(db_url, procs, tmp_path):
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"static": dict(LAB, state=str(tmp_path / "static.json"))}))
    server = procs.server(db_url, "--providers", str(conf), "--public-url", "https://scitq.example:5000")
    listed = scitq(server.url, "provider", "list")
    assert listed.returncode == 0 and "static" in listed.stdout
    flavors = scitq(server.url, "provider", "flavors", "static")     # fills the empty catalog
    assert flavors.returncode == 0 and "static-8c" in flavors.stdout and "0.2000" in flavors.stdout
    made = scitq(server.url, "provider", "create", "static", "--flavor", "gpu", "--region", "lab", "--json")
    assert made.returncode == 0, made.stderr
    (inst,) = json.loads(made.stdout)
    assert inst["id"] == "gpu1" and inst["ip"] == "127.0.0.13"
    assert "gpu1" in scitq(server.url, "provider", "instances", "static").stdout
    assert scitq(server.url, "provider", "delete", "static", "gpu1").returncode == 0
    assert "gpu1" not in scitq(server.url, "provider", "instances", "static").stdout
    for args in (("provider", "regions", "ovh"), ("provider", "flavors", "azure"),
                 ("provider", "create", "nope", "-f", "x", "-r", "y"),
                 ("provider", "quotas", "static")):
        bad = scitq(server.url, *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("error: ")


def test_a_spot_max_price_is_minus_one_or_above_zero(lab_app, db_url, procs, tmp_path):
    """Azure's rule (MaxPriceValueInvalid otherwise), checked before any provider is asked."""
    c = lab_app.test_client()
    for bad in (0, -0.5, -2):
        r = c.post(f"{API}/providers/static/instances",
                   json={"flavor": "static-8c", "region": "lab", "spot": True, "max_price": bad})
        assert r.status_code == 400 and "-1" in r.get_json()["error"], r.get_json()
    assert not (tmp_path / "static.json").exists() or '"lab1"' not in (tmp_path / "static.json").read_text()
    conf = tmp_path / "providers.yaml"
    conf.write_text(yaml.safe_dump({"static": dict(LAB, state=str(tmp_path / "cli-static.json"))}))
    server = procs.server(db_url, "--providers", str(conf), "--public-url", "https://scitq.example:5000")
    bad = scitq(server.url, "provider", "create", "static", "-f", "gpu", "-r", "lab", "--spot", "--max-price", "0")
    assert bad.returncode == 2, (bad.stdout, bad.stderr)
    assert len(bad.stderr.strip().splitlines()) == 1 and "max_price" in bad.stderr
    ok = scitq(server.url, "provider", "create", "static", "-f", "gpu", "-r", "lab", "--max-price", "-1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert scitq(server.url, "provider", "delete", "static", "gpu1").returncode == 0
