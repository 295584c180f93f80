"""The OVH provider through the real openstacksdk and python-ovh, against the loopback fake."""
import base64
import os
import subprocess
import sys
import time

import pytest

from fakes.openstack import FakeOpenStack
from provider_contract import check_catalog, check_lifecycle
from scitq.errors import AuthError, BadRequest, CapacityError, InstanceNotFound, QuotaExceeded, TransientError
from scitq.providers import TAG, InstanceSpec, InstanceStatus, get_provider

pytest.importorskip("openstack")
pytest.importorskip("ovh")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"),      # the SDK's own
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNjaXRxLXRlc3Qta2V5LTAwMDAwMDAwMDAwMDAwMDA= scitq@test"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG90aGVyLXNjaXRxLXRlc3Qta2V5LTAwMDAwMDAwMDA= other@test"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Credentials and proxies only from the test: nothing leaves loopback."""
    for name in list(os.environ):
        if name.startswith(("OS_", "OVH_")) or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def cloud():
    with FakeOpenStack() as fake:
        yield fake


@pytest.fixture
def provider(cloud):
    return get_provider("ovh", cloud.provider_config())


def spec(name, region="GRA11", flavor="b2-7", key=KEY, **kw):
    return InstanceSpec(name=name, flavor=flavor, region=region, ssh_public_key=key, **kw)


def running(provider, instance):
    return provider.get(instance.id)        # create() returns once ACTIVE


def test_catalog_with_prices(provider):
    assert provider.regions() == ["GRA11", "SBG5"]
    flavors = {f.name: f for f in check_catalog(provider, "GRA11")}
    b2 = flavors["b2-7"]
    assert (b2.cpu, b2.disk, b2.hourly_cost, b2.gpu) == (2, 50.0, pytest.approx(0.0681), 0)
    assert b2.ram == pytest.approx(7000 / 1024, abs=0.001)
    assert flavors["t1-45"].gpu == 1 and flavors["t1-45"].gpu_model == "V100"
    assert flavors["d2-2"].hourly_cost is None                   # not in the price catalog
    assert "win-b2-7" not in flavors                             # Windows flavors left out
    assert all(f.hourly_cost is not None for n, f in flavors.items() if n != "d2-2")
    assert {f.region for f in provider.flavors()} == {"GRA11", "SBG5"}


def test_prices_without_ovh_credentials_use_the_plan_code_convention(cloud):
    config = cloud.provider_config()
    for key in ("application_key", "application_secret", "consumer_key"):
        del config[key]
    flavors = {f.name: f for f in get_provider("ovh", config).flavors("SBG5")}
    assert flavors["c2-30"].hourly_cost == pytest.approx(0.2722)
    assert "win-b2-7" not in flavors
    assert cloud.count("GET", r"/cloud/project/") == 0


def test_lifecycle(cloud, provider):
    s = spec("scitq-life-1", user_data="#cloud-config\n", tags={"batch": "7"})
    check_lifecycle(provider, s, running)
    assert cloud.count("POST", r"/servers$") == 1
    assert not cloud.live_servers()


def test_create_sends_what_nova_needs(cloud, provider):
    instance = provider.create(spec("scitq-shape", region="SBG5", user_data="#!/bin/sh\necho hi\n",
                                    tags={"batch": 3}))
    try:
        assert instance.status is InstanceStatus.RUNNING and instance.user == "debian"
        assert instance.ip.startswith("51.") and instance.id.startswith("SBG5/")
        assert instance.tags == {"batch": "3", TAG: "scitq-shape"}
        server, = cloud.live_servers("SBG5")
        assert base64.b64decode(server["user_data"]).decode() == "#!/bin/sh\necho hi\n"
        assert server["key_name"].startswith("scitq-") and server["networks"][0]["uuid"]
        assert provider.get(instance.id.split("/", 1)[1]).id == instance.id   # a bare Nova id is found
    finally:
        provider.delete(instance.id)


def test_lifecycle_on_a_nova_without_microversions():
    # before 2.47 a server names its flavor by id only; before 2.37 `networks` is optional
    with FakeOpenStack(regions=("BHS5",), nova_max_microversion="2.1") as old:
        provider = get_provider("ovh", old.provider_config())
        check_lifecycle(provider, spec("scitq-old", region="BHS5", flavor="b2-15"), running)


def test_quota_from_nova_is_quota_exceeded(cloud, provider):
    cloud.fail_next_create = "quota"
    with pytest.raises(QuotaExceeded, match="Quota exceeded for cores") as err:
        provider.create(spec("scitq-quota-1"))
    assert err.value.retry_elsewhere
    cloud.limits["GRA11"]["cores"] = 4                            # and the fake's own accounting
    with pytest.raises(QuotaExceeded):
        provider.create(spec("scitq-quota-2", flavor="c2-30"))
    assert not cloud.live_servers()
    assert not cloud.keypairs["GRA11"]                           # the keypair those attempts made is gone


def test_no_valid_host_is_capacity_error_and_the_server_is_deleted(cloud, provider):
    cloud.fail_next_create = "no_valid_host"
    with pytest.raises(CapacityError, match="No valid host"):
        provider.create(spec("scitq-novalid"))
    assert cloud.count("DELETE", r"/servers/") == 1
    time.sleep(cloud.delete_delay + 0.05)
    assert not cloud.live_servers()
    assert not cloud.keypairs["GRA11"]


def test_a_failed_create_keeps_what_it_did_not_make(cloud, provider):
    first = provider.create(spec("scitq-keep-1"))
    key_name = cloud.live_servers("GRA11")[0]["key_name"]
    cloud.fail_next_create = "no_valid_host"
    with pytest.raises(CapacityError):
        provider.create(spec("scitq-keep-2"))
    assert list(cloud.keypairs["GRA11"]) == [key_name]          # it existed before: kept
    assert provider.get(first.id).status is InstanceStatus.RUNNING
    provider.delete(first.id)


def test_bad_credentials_are_auth_errors(cloud):
    wrong = get_provider("ovh", cloud.provider_config(auth=cloud.auth(password="wrong")))
    with pytest.raises(AuthError):
        wrong.regions()
    with pytest.raises(AuthError):
        wrong.create(spec("scitq-auth"))
    wrong_ovh = get_provider("ovh", cloud.provider_config(application_key="not-mine"))
    with pytest.raises(AuthError, match="application key is invalid"):
        wrong_ovh.flavors("GRA11")
    with pytest.raises(AuthError, match="consumer_key"):
        get_provider("ovh", cloud.provider_config(consumer_key="")).flavors("GRA11")
    with pytest.raises(AuthError):
        get_provider("ovh", {"cloud": "no-such-cloud"}).regions()


def test_keypair_made_once_and_reused(cloud, provider):
    made = [provider.create(spec(f"scitq-key-{i}")) for i in range(2)]
    other = provider.create(spec("scitq-key-other", key=OTHER_KEY))
    try:
        assert cloud.count("POST", r"/os-keypairs$") == 2
        names = {s["name"]: s["key_name"] for s in cloud.live_servers("GRA11")}
        assert names["scitq-key-0"] == names["scitq-key-1"] != names["scitq-key-other"]
    finally:
        for instance in made + [other]:
            provider.delete(instance.id)


def test_list_filters_by_tag(cloud, provider):
    import openstack
    conn = openstack.connect(auth=cloud.auth(), region_name="GRA11", load_yaml_config=False, load_envvars=False)
    image = next(conn.image.images(name="Debian 12"))
    flavor = next(f for f in conn.compute.flavors() if f.name == "b2-7")
    net = conn.network.find_network("Ext-Net", ignore_missing=False)
    conn.compute.create_server(name="not-ours", flavor_id=flavor.id, image_id=image.id,
                               networks=[{"uuid": net.id}], metadata={"owner": "someone"})
    a = provider.create(spec("scitq-a", tags={"batch": "1"}))
    b = provider.create(spec("scitq-b", region="SBG5", tags={"batch": "2"}))
    try:
        assert {i.name for i in provider.list()} == {"scitq-a", "scitq-b"}
        assert [i.id for i in provider.list({"batch": "1"})] == [a.id]
        assert [i.name for i in provider.list({"owner": None})] == ["not-ours"]
        listed = {i.id: i for i in provider.list()}
        assert listed[b.id].region == "SBG5" and listed[b.id].flavor == "b2-7"
    finally:
        provider.delete(a.id)
        provider.delete(b.id)
    assert provider.list() == []


def test_quotas_from_nova_limits(cloud, provider):
    instance = provider.create(spec("scitq-q", flavor="b2-15"))
    try:
        quotas = {q.resource: q for q in provider.quotas("GRA11")}
        assert (quotas["cores"].used, quotas["cores"].limit) == (4, 20)
        assert (quotas["instances"].used, quotas["instances"].limit) == (1, 10)
        assert quotas["ram_gib"].limit == 50
    finally:
        provider.delete(instance.id)


def test_lookups_and_transient_errors(cloud, provider):
    with pytest.raises(InstanceNotFound):
        provider.get("GRA11/00000000-0000-0000-0000-000000000000")
    with pytest.raises(InstanceNotFound):
        provider.get("00000000-0000-0000-0000-000000000000")
    provider.delete("GRA11/00000000-0000-0000-0000-000000000000")          # gone already: fine
    cloud.inject("GET", r"/servers/detail$", 503, {"computeFault": {"message": "busy", "code": 503}})
    with pytest.raises(TransientError):
        provider.list()
    unreachable = FakeOpenStack()
    unreachable.stop()                                                      # nothing listens there now
    with pytest.raises(TransientError):
        get_provider("ovh", {"auth": unreachable.auth(), "api_timeout": 5}).regions()
    with pytest.raises(BadRequest):
        provider.create(spec("scitq-spot", spot=True))
    with pytest.raises(BadRequest, match="no flavor"):
        provider.create(spec("scitq-flavorless", flavor="zz-1"))
    assert not cloud.keypairs["GRA11"]


def test_module_imports_without_the_sdks():
    code = (
        "import sys\n"
        "sys.modules['openstack'] = None\n"         # import openstack -> ImportError
        "sys.modules['ovh'] = None\n"
        "import scitq.providers.ovh\n"
        "from scitq.errors import ProviderUnavailable\n"
        "from scitq.providers import get_provider\n"
        "try:\n"
        "    get_provider('ovh').flavors()\n"
        "except ProviderUnavailable as exc:\n"
        "    print('unavailable:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "unavailable:" in out.stdout and "scitq[ovh]" in out.stdout


def test_reading_servers_and_flavors():
    from types import SimpleNamespace as NS

    from scitq.providers.ovh import STATUS, _addresses, _gpu
    server = NS(addresses={"vrack": [{"addr": "10.1.0.7", "version": 4}],
                           "Ext-Net": [{"addr": "2001:41d0::1", "version": 6}, {"addr": "51.75.0.9", "version": 4}]})
    assert _addresses(server, "Ext-Net") == ("51.75.0.9", "10.1.0.7")
    floating = NS(addresses={"priv": [{"addr": "10.0.0.3", "version": 4},
                                      {"addr": "203.0.113.4", "version": 4, "OS-EXT-IPS:type": "floating"}]})
    assert _addresses(floating, "Ext-Net") == ("203.0.113.4", "10.0.0.3")
    assert _gpu(NS(name="a100-360", extra_specs={})) == (2, "A100")
    assert _gpu(NS(name="t1-le-90", extra_specs={})) == (2, "V100")
    assert _gpu(NS(name="x-1", extra_specs={"pci_passthrough:alias": "h100:4"})) == (4, "h100")
    assert _gpu(NS(name="b2-7", extra_specs={})) == (0, None)
    assert STATUS["BUILD"] is InstanceStatus.CREATING and STATUS["SOFT_DELETED"] is InstanceStatus.DELETED
    assert STATUS["ERROR"] is InstanceStatus.FAILED and STATUS["ACTIVE"] is InstanceStatus.RUNNING


# --- the cloud's real answers (issue 22) ---------------------------------------------------------
# Each test names the published material it follows; the fixtures are written from its facts.

def test_flavors_out_of_stock_are_not_offered_nor_rented(cloud, provider):
    """OVH's /cloud/project/{serviceName}/flavor rows carry `available` (in stock)."""
    cloud.unavailable.add(("GRA11", "b2-15"))
    assert "b2-15" not in {f.name for f in provider.flavors("GRA11")}
    assert "b2-15" in {f.name for f in provider.flavors("SBG5")}
    with pytest.raises(CapacityError, match="out of stock") as err:
        provider.create(spec("scitq-stock", flavor="b2-15"))
    assert err.value.retry_elsewhere and cloud.count("POST", r"/servers$") == 0
    assert not cloud.live_servers() and not cloud.keypairs["GRA11"]


@pytest.mark.parametrize("microversion, created, deleted", [("2.1", 200, 202), ("2.79", 201, 204)])
def test_keypair_codes_follow_the_microversion(microversion, created, deleted):
    """nova's keypairs controller and doc/api_samples/os-keypairs (v2.2/keypairs-post-resp.json):
    create answers 200 at 2.1 and 201 from 2.2 (with `type`), delete 202 then 204; openstacksdk
    takes either, and a failed create drops the keypair it made."""
    with FakeOpenStack(regions=("GRA11",), nova_max_microversion=microversion) as fake:
        provider = get_provider("ovh", fake.provider_config())
        fake.fail_next_create = "quota"
        with pytest.raises(QuotaExceeded):
            provider.create(spec("scitq-kp"))
        answers = [(m, p) for m, p in fake.requests if "os-keypairs" in p]
        assert [m for m, _ in answers] == ["GET", "POST", "DELETE"]
        assert not fake.keypairs["GRA11"]
        import openstack
        conn = openstack.connect(auth=fake.auth(), region_name="GRA11", load_yaml_config=False,
                                 load_envvars=False)
        raw = conn.compute.post("/os-keypairs", json={"keypair": {"name": "k", "public_key": KEY}},
                                microversion=microversion)
        assert raw.status_code == created and ("type" in raw.json()["keypair"]) == (created == 201)
        assert conn.compute.delete("/os-keypairs/k", microversion=microversion).status_code == deleted


def test_the_compute_endpoint_carries_no_project_id(cloud, provider):
    """OVH's catalog gives compute as https://compute.<region>.cloud.ovh.net/v2.1 (no project id,
    which microversion 2.18 made optional); the SDK's calls must not need one."""
    provider.regions()
    import openstack
    conn = openstack.connect(auth=cloud.auth(), region_name="GRA11", load_yaml_config=False, load_envvars=False)
    url = conn.compute.get_endpoint()
    assert url.rstrip("/").endswith("/v2.1") and cloud.project_id not in url
    instance = provider.create(spec("scitq-endpoint"))
    provider.delete(instance.id)
    assert all(cloud.project_id not in p for m, p in cloud.requests if p.startswith("/compute/"))


def test_a_delete_nova_leaves_in_error_is_asked_again_until_gone(cloud, provider):
    """A server delete can fail inside Nova (the server goes to ERROR, task_state None)."""
    instance = provider.create(spec("scitq-err-delete"))
    cloud.fail_deletes = 2
    provider.delete(instance.id)
    assert not cloud.live_servers() and cloud.count("DELETE", r"/servers/") == 3


def test_a_failed_create_whose_delete_fails_names_what_is_left(cloud):
    provider = get_provider("ovh", cloud.provider_config(delete_timeout=0.3))
    cloud.fail_next_create = "no_valid_host"
    cloud.fail_deletes = 100
    with pytest.raises(CapacityError) as err:
        provider.create(spec("scitq-stuck"))
    (left,) = err.value.leftovers
    assert left.startswith("server GRA11/")
    cloud.fail_deletes = 0
    provider.delete(left.split(" ", 1)[1])
    assert not cloud.live_servers()


def test_throttling_is_a_failover_error(cloud, provider):
    from scitq.errors import Throttled
    cloud.inject("POST", r"/servers$", 429, {"overLimit": {"code": 429, "message": "Over limit",
                                                          "retryAfter": "1200"}})
    with pytest.raises(Throttled) as err:
        provider.create(spec("scitq-429"))
    assert err.value.retry_elsewhere and not cloud.live_servers() and not cloud.keypairs["GRA11"]


def test_a_429_with_retry_after_is_waited_out_within_the_bound(cloud):
    """Nova's 429 with Retry-After on each call of a create (keypair, server, its polls) and of a
    delete: each is waited out and said, once per 429, through the job's progress line."""
    from scitq.providers.base import reporting
    provider = get_provider("ovh", cloud.provider_config(max_retry_after=1))
    for method, path in [("POST", r"/os-keypairs$"), ("POST", r"/servers$"), ("GET", r"/servers/[^/]+$")]:
        cloud.throttle_next(method, path, 1)
    lines = []
    with reporting(lines.append):
        instance = provider.create(spec("scitq-slow"))
        assert len(lines) == 3 and all("ovh: throttled (HTTP 429): waiting 1 s, until" in line for line in lines)
        cloud.throttle_next("DELETE", r"/servers/", 1)
        provider.delete(instance.id)
    assert len(lines) == 4 and not cloud.live_servers()
    assert cloud.count("POST", r"/servers$") == 2 and cloud.count("DELETE", r"/servers/") == 2


def test_a_429_beyond_the_bound_or_without_retry_after_fails_over_at_once(cloud):
    from scitq.errors import Throttled
    provider = get_provider("ovh", cloud.provider_config(max_retry_after=1))
    instance = provider.create(spec("scitq-held"))
    cloud.throttle_next("DELETE", r"/servers/", 2)
    with pytest.raises(Throttled) as err:
        provider.delete(instance.id)
    assert "Retry-After 2 s, beyond scitq's bound of 1 s): DELETE" in err.value.message
    cloud.inject("DELETE", r"/servers/", 429, {"overLimit": {"code": 429, "message": "Over limit"}})
    with pytest.raises(Throttled):
        provider.delete(instance.id)
    provider.delete(instance.id)
    assert not cloud.live_servers()
