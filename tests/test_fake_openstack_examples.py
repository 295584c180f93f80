"""The OpenStack and OVH API fake answers each call the OVH adapter makes as the published
examples say the real services do (issue 22, acceptance 7): one test per call, each naming the
file it follows (openstack/nova doc/api_samples, openstacksdk's openstack/tests/unit/fixtures,
the keystone, glance and neutron api-refs, OVH's API schema for /cloud and /order), whose status
codes, headers, body fields and error codes it checks. The fixtures are the fake's own, written
from those facts. The answers are read on the wire (httpx), not through the SDKs.
{NOVA}, {KEYSTONE} and {SDK} in the docstrings stand for the folders below.

The calls scitq.providers.ovh makes (a create, get, list, delete, quotas, flavors and regions
against the fake, its requests logged): Keystone GET /, GET /v3, POST /v3/auth/tokens (the
catalog read for regions); Nova GET {compute}/, GET /v2.1, GET /flavors/detail, GET /limits,
GET and POST /os-keypairs[/{name}], DELETE /os-keypairs/{name} (a failed create's own keypair),
POST /servers, GET /servers/{id}, GET /servers/detail, DELETE /servers/{id}, GET /flavors/{id}
(a server that names only its flavor's id); Glance GET {image}/ and /v2/images?name=; Neutron
GET /v2.0/networks/{name} (find_network tries the name as an id) then /v2.0/networks?name=;
the OVH API GET /auth/time, /cloud/project/{serviceName}/flavor?region= (signed) and
/order/catalog/public/cloud?ovhSubsidiary= (public)."""
import hashlib
import time

import httpx
import pytest

pytest.importorskip("openstack")
pytest.importorskip("ovh")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"),
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]

from fakes.openstack import FakeOpenStack, fingerprint  # noqa: E402

from scitq.providers import InstanceSpec  # noqa: E402
from scitq.providers.ovh import OVHProvider, _keypair_name  # noqa: E402

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5IGZvciBzY2l0cSB0ZXN0cyBvbmx5 scitq@test"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNjaXRxIG90aGVyIGtleSBmb3IgdGVzdHMgb25seSEh other@test"
NOVA = "openstack/nova doc/api_samples/"
KEYSTONE = "openstack/keystone api-ref/source/v3/samples/admin/"
SDK = "openstack/openstacksdk openstack/tests/unit/fixtures/"
REGION = "GRA11"
# The microversions openstacksdk asks for each call (its resources' _max_microversion, capped by
# the fake's 2.79): servers 2.100, keypairs 2.10, limits 2.57, flavors 2.61.
SERVER_MV, KEYPAIR_MV, LIMITS_MV, FLAVOR_MV = "2.79", "2.10", "2.57", "2.61"


@pytest.fixture
def cloud(monkeypatch):
    """(fake, http client holding a Keystone token, the adapter's Instance of one server)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeOpenStack(build_delay=0.0, delete_delay=0.2) as fake:
        host = OVHProvider(fake.provider_config()).create(
            InstanceSpec(name="host1", flavor="b2-7", region=REGION, ssh_public_key=KEY))
        with httpx.Client(base_url=fake.url, timeout=10, trust_env=False) as http:
            http.headers["X-Auth-Token"] = token(fake, http).headers["X-Subject-Token"]
            yield fake, http, host


def token(fake, http, password=None):
    """POST /v3/auth/tokens, password method, project-scoped (what keystoneauth sends)."""
    return http.post("/v3/auth/tokens", json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": fake.username, "domain": {"name": "Default"},
            "password": fake.password if password is None else password}}},
        "scope": {"project": {"id": fake.project_id}}}})


def nova(http, method, path, mv, **kwargs):
    """A Nova call at a microversion, as openstacksdk sends it (OpenStack-API-Version)."""
    return http.request(method, f"/compute/{REGION}/v2.1{path}",
                        headers={"OpenStack-API-Version": f"compute {mv}"}, **kwargs)


def server_id(host):
    return host.id.split("/", 1)[1]


def signed(fake, method, path, body=""):
    """The OVH API's request signature: "$1$" + SHA1 of secret+consumer+method+URL+body+timestamp."""
    ts = str(int(time.time()))
    url = f"{fake.url}/1.0{path}"
    sig = hashlib.sha1("+".join([fake.ovh_keys["application_secret"], fake.ovh_keys["consumer_key"],
                                 method, url, body, ts]).encode()).hexdigest()
    return {"X-Ovh-Application": fake.ovh_keys["application_key"], "X-Ovh-Consumer": fake.ovh_keys["consumer_key"],
            "X-Ovh-Timestamp": ts, "X-Ovh-Signature": "$1$" + sig}


# --- Keystone ------------------------------------------------------------------------------------

def test_keystone_version_discovery(cloud):
    """GET / and GET /v3: {KEYSTONE}identity-versions-response.json (300 Multiple Choices,
    versions.values[] of id, status "stable", links, media-types) and identity-version-response.json."""
    fake, http, _ = cloud
    root = http.get("/")
    assert root.status_code == 300
    (v3,) = root.json()["versions"]["values"]
    assert v3["id"].startswith("v3.") and v3["status"] == "stable"
    assert v3["links"][0]["rel"] == "self" and v3["links"][0]["href"].endswith("/v3/")
    assert v3["media-types"] == [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]
    assert http.get("/v3").json() == {"version": v3}


def test_keystone_password_token_and_its_catalog(cloud):
    """POST /v3/auth/tokens: {KEYSTONE}auth-password-user-name-unscoped-response-HTTP.txt (201
    Created, the token in X-Subject-Token) and auth-password-project-scoped-response.json (methods,
    roles, expires_at, project with its domain, is_domain, catalog[] of type, id, name and
    endpoints[] of id, interface, region, region_id, url); OVH's compute endpoint carries no
    project id. A wrong password: 401 {"error": {code, title "Unauthorized", message}}."""
    fake, http, _ = cloud
    answer = token(fake, http)
    assert answer.status_code == 201 and len(answer.headers["X-Subject-Token"]) >= 32
    body = answer.json()["token"]
    assert {"methods", "roles", "expires_at", "issued_at", "project", "is_domain", "catalog", "user",
            "audit_ids"} <= set(body)
    assert body["methods"] == ["password"] and body["is_domain"] is False
    assert body["project"] == {"domain": {"id": "default", "name": "Default"}, "id": fake.project_id,
                               "name": fake.project_name}
    assert all(set(r) == {"id", "name"} for r in body["roles"])
    assert body["expires_at"] > body["issued_at"]
    services = {s["type"]: s for s in body["catalog"]}
    assert {"identity", "compute", "network", "image"} <= set(services)
    for service in services.values():
        assert {"id", "name", "type", "endpoints"} <= set(service)
        for endpoint in service["endpoints"]:
            assert set(endpoint) == {"id", "interface", "region", "region_id", "url"}
            assert endpoint["region"] == endpoint["region_id"]
    compute = {e["region"]: e["url"] for e in services["compute"]["endpoints"]}
    assert set(compute) == set(fake.regions) and compute[REGION].endswith("/v2.1")
    refused = token(fake, http, password="wrong")
    assert refused.status_code == 401 and "X-Subject-Token" not in refused.headers
    assert refused.json()["error"]["code"] == 401 and refused.json()["error"]["title"] == "Unauthorized"
    no_token = httpx.get(f"{fake.url}/compute/{REGION}/v2.1/servers/detail", trust_env=False)
    assert no_token.status_code == 401


# --- Nova ----------------------------------------------------------------------------------------

def test_nova_version_documents_and_microversion_headers(cloud):
    """GET {compute}/ ({SDK}compute-version.json: versions[] with id v2.1, status CURRENT, version
    and min_version) and GET /v2.1 ({NOVA}versions/v21-version-get-resp.json); every answer names
    its microversion in OpenStack-API-Version and X-OpenStack-Nova-API-Version, with Vary (nova's
    api-ref, microversions); one beyond the maximum: 406."""
    _, http, _ = cloud
    (v21,) = [v for v in http.get(f"/compute/{REGION}/").json()["versions"] if v["id"] == "v2.1"]
    assert v21["status"] == "CURRENT" and v21["min_version"] == "2.1" and v21["version"] == "2.79"
    doc = http.get(f"/compute/{REGION}/v2.1").json()["version"]
    assert {"id", "links", "media-types", "status", "version", "min_version", "updated"} <= set(doc)
    assert doc["media-types"][0]["type"] == "application/vnd.openstack.compute+json;version=2.1"
    answer = nova(http, "GET", "/limits", LIMITS_MV)
    assert answer.headers["OpenStack-API-Version"] == f"compute {LIMITS_MV}"
    assert answer.headers["X-OpenStack-Nova-API-Version"] == LIMITS_MV
    assert "OpenStack-API-Version" in answer.headers["Vary"]
    too_new = nova(http, "GET", "/limits", "2.200")
    assert too_new.status_code == 406 and too_new.json()["computeFault"]["code"] == 406


def test_flavors_detail(cloud):
    """GET /flavors/detail at 2.61 ({NOVA}flavors/v2.61/flavors-detail-resp.json: every field of
    the sample, swap "" before 2.75, description and extra_specs, links self and bookmark) and at
    2.75 ({NOVA}flavors/v2.75/flavors-detail-resp.json: swap 0); the ids are OVH's flavor ids."""
    fake, http, _ = cloud
    answer = nova(http, "GET", "/flavors/detail", FLAVOR_MV)
    assert answer.status_code == 200
    flavors = answer.json()["flavors"]
    sample_keys = {"OS-FLV-DISABLED:disabled", "disk", "OS-FLV-EXT-DATA:ephemeral", "os-flavor-access:is_public",
                   "id", "links", "name", "ram", "swap", "vcpus", "rxtx_factor", "description", "extra_specs"}
    assert all(set(f) == sample_keys for f in flavors)
    b2 = next(f for f in flavors if f["name"] == "b2-7")
    assert (b2["vcpus"], b2["ram"], b2["disk"], b2["swap"], b2["extra_specs"]) == (2, 7000, 50, "", {})
    assert [link["rel"] for link in b2["links"]] == ["self", "bookmark"]
    assert b2["links"][0]["href"].endswith(f"/v2.1/flavors/{b2['id']}") and "/v2.1/" not in b2["links"][1]["href"]
    assert nova(http, "GET", "/flavors/detail", "2.75").json()["flavors"][0]["swap"] == 0
    one = nova(http, "GET", f"/flavors/{b2['id']}", FLAVOR_MV)
    assert one.status_code == 200 and one.json() == {"flavor": b2}
    missing = nova(http, "GET", "/flavors/nope", FLAVOR_MV)
    assert missing.status_code == 404 and missing.json()["itemNotFound"]["code"] == 404


def test_limits(cloud):
    """GET /limits: {NOVA}limits/v2.36/limit-get-resp.json (absolute without the network quotas,
    rate []) less maxPersonality and maxPersonalitySize from 2.57 (the api-ref), and before 2.36
    {NOVA}limits/limit-get-resp.json (with maxSecurityGroups, maxTotalFloatingIps and their use);
    the used counts follow the one server (b2-7: 2 vCPUs, 7,000 MiB)."""
    _, http, _ = cloud
    v236 = {"maxImageMeta", "maxPersonality", "maxPersonalitySize", "maxServerMeta", "maxTotalCores",
            "maxTotalInstances", "maxTotalKeypairs", "maxTotalRAMSize", "maxServerGroups", "maxServerGroupMembers",
            "totalCoresUsed", "totalInstancesUsed", "totalRAMUsed", "totalServerGroupsUsed"}
    answer = nova(http, "GET", "/limits", LIMITS_MV)
    assert answer.status_code == 200 and answer.json()["limits"]["rate"] == []
    absolute = answer.json()["limits"]["absolute"]
    assert set(absolute) == v236 - {"maxPersonality", "maxPersonalitySize"}
    assert (absolute["totalInstancesUsed"], absolute["totalCoresUsed"], absolute["totalRAMUsed"]) == (1, 2, 7000)
    assert (absolute["maxTotalInstances"], absolute["maxTotalCores"], absolute["maxTotalRAMSize"]) == (10, 20, 51200)
    assert set(nova(http, "GET", "/limits", "2.36").json()["limits"]["absolute"]) == v236
    assert set(nova(http, "GET", "/limits", "2.1").json()["limits"]["absolute"]) == v236 | {
        "maxSecurityGroupRules", "maxSecurityGroups", "maxTotalFloatingIps", "totalSecurityGroupsUsed",
        "totalFloatingIpsUsed"}


def test_server_create_and_its_refusals(cloud):
    """POST /servers: {NOVA}servers/server-create-resp.json (202 Accepted, server {id, adminPass,
    OS-DCF:diskConfig, security_groups, links}, Location the self link, as nova's create sets it);
    refusals: a quota 403 {"forbidden": {code, message "Quota exceeded for cores: ..."}}, an unknown
    flavor or a missing `networks` from 2.37 ({NOVA}servers/v2.37/server-create-req.json) 400
    badRequest, an unknown keypair 400 "Invalid key_name provided."."""
    fake, http, _ = cloud
    flavor = next(f["id"] for f in nova(http, "GET", "/flavors/detail", FLAVOR_MV).json()["flavors"]
                  if f["name"] == "b2-7")
    image = http.get(f"/image/{REGION}/v2/images", params={"name": "Debian 12"}).json()["images"][0]["id"]
    body = {"server": {"name": "host2", "flavorRef": flavor, "imageRef": image, "networks": "auto",
                       "metadata": {"scitq": "host2"}}}
    made = nova(http, "POST", "/servers", SERVER_MV, json=body)
    assert made.status_code == 202
    server = made.json()["server"]
    assert set(server) == {"id", "adminPass", "OS-DCF:diskConfig", "security_groups", "links"}
    assert made.headers["Location"] == server["links"][0]["href"] and server["links"][0]["rel"] == "self"
    fake.fail_next_create = "quota"
    quota = nova(http, "POST", "/servers", SERVER_MV, json=body)
    assert quota.status_code == 403 and quota.json()["forbidden"]["code"] == 403
    assert quota.json()["forbidden"]["message"].startswith("Quota exceeded for cores: Requested")
    bad = nova(http, "POST", "/servers", SERVER_MV, json={"server": dict(body["server"], flavorRef="nope")})
    assert bad.status_code == 400 and bad.json()["badRequest"]["code"] == 400
    no_net = {"server": {k: v for k, v in body["server"].items() if k != "networks"}}
    assert nova(http, "POST", "/servers", SERVER_MV, json=no_net).status_code == 400
    assert nova(http, "POST", "/servers", "2.1", json=no_net).status_code == 202
    no_key = nova(http, "POST", "/servers", SERVER_MV, json={"server": dict(body["server"], key_name="nope")})
    assert no_key.status_code == 400 and no_key.json()["badRequest"]["message"] == "Invalid key_name provided."


SERVER_KEYS = {   # {NOVA}servers/v2.47/server-get-resp.json as a project member sees it (no OS-EXT-SRV-ATTR)
    "OS-DCF:diskConfig", "OS-EXT-AZ:availability_zone", "OS-EXT-STS:power_state", "OS-EXT-STS:task_state",
    "OS-EXT-STS:vm_state", "OS-SRV-USG:launched_at", "OS-SRV-USG:terminated_at", "accessIPv4", "accessIPv6",
    "addresses", "config_drive", "created", "description", "flavor", "hostId", "id", "image", "key_name",
    "links", "locked", "metadata", "name", "os-extended-volumes:volumes_attached", "progress",
    "security_groups", "status", "tags", "tenant_id", "updated", "user_id"}


def test_server_get(cloud):
    """GET /servers/{id}: {NOVA}servers/v2.47/server-get-resp.json (from 2.47 the flavor embedded:
    original_name, vcpus, ram, disk, ephemeral, swap, extra_specs; addresses[net][] of addr, version,
    OS-EXT-IPS:type, OS-EXT-IPS-MAC:mac_addr) and, before 2.47, {NOVA}servers/server-get-resp.json
    (flavor {id, links}); unknown: 404 itemNotFound "Instance <id> could not be found."."""
    _, http, host = cloud
    answer = nova(http, "GET", f"/servers/{server_id(host)}", SERVER_MV)
    assert answer.status_code == 200
    server = answer.json()["server"]
    assert SERVER_KEYS <= set(server)
    assert server["status"] == "ACTIVE" and server["OS-EXT-STS:vm_state"] == "active"
    assert server["OS-EXT-STS:task_state"] is None and server["OS-EXT-STS:power_state"] == 1
    assert server["metadata"]["scitq"] == "host1" and server["key_name"] == _keypair_name(KEY)
    assert set(server["flavor"]) == {"original_name", "vcpus", "ram", "disk", "ephemeral", "swap", "extra_specs"}
    assert server["flavor"]["original_name"] == "b2-7"
    ipv4 = [a for a in server["addresses"]["Ext-Net"] if a["version"] == 4]
    assert set(ipv4[0]) == {"addr", "version", "OS-EXT-IPS:type", "OS-EXT-IPS-MAC:mac_addr"}
    assert ipv4[0]["addr"] == host.ip and ipv4[0]["OS-EXT-IPS:type"] == "fixed"
    assert [link["rel"] for link in server["links"]] == ["self", "bookmark"]
    old = nova(http, "GET", f"/servers/{server_id(host)}", "2.1").json()["server"]
    assert set(old["flavor"]) == {"id", "links"} and "locked" not in old and "tags" not in old
    missing = nova(http, "GET", "/servers/0b0b0b0b-0000-4000-8000-000000000000", SERVER_MV)
    assert missing.status_code == 404
    assert missing.json() == {"itemNotFound": {"code": 404, "message":
                                               "Instance 0b0b0b0b-0000-4000-8000-000000000000 could not be found."}}


def test_server_get_in_error_with_its_fault(cloud):
    """A server Nova could not place: status ERROR, vm_state error, and `fault` {code, created,
    message} (nova's api-ref, Show Server: "details" only for administrators when the code is 500),
    the message NoValidHost's "No valid host was found. ..."."""
    fake, http, host = cloud
    fake.fail_next_create = "no_valid_host"
    body = {"server": {"name": "host3", "flavorRef": fake._flavor_id(REGION, "b2-7"),
                       "imageRef": fake._image_id(REGION, "Debian 12"), "networks": "auto"}}
    sid = nova(http, "POST", "/servers", SERVER_MV, json=body).json()["server"]["id"]
    server = nova(http, "GET", f"/servers/{sid}", SERVER_MV).json()["server"]
    assert server["status"] == "ERROR" and server["OS-EXT-STS:vm_state"] == "error"
    assert set(server["fault"]) == {"code", "created", "message"}
    assert server["fault"]["code"] == 500 and server["fault"]["message"].startswith("No valid host was found")


def test_servers_detail_and_list(cloud):
    """GET /servers/detail ({NOVA}servers/v2.47/servers-details-resp.json: servers[] shaped as a
    GET of one) and GET /servers ({NOVA}servers/v2.47/servers-list-resp.json: id, name, links)."""
    _, http, host = cloud
    answer = nova(http, "GET", "/servers/detail", SERVER_MV)
    assert answer.status_code == 200
    (server,) = answer.json()["servers"]
    assert server == nova(http, "GET", f"/servers/{server_id(host)}", SERVER_MV).json()["server"]
    (brief,) = nova(http, "GET", "/servers", SERVER_MV).json()["servers"]
    assert set(brief) == {"id", "name", "links"} and brief["id"] == server_id(host)


def test_server_delete_and_a_delete_that_fails(cloud):
    """DELETE /servers/{id}: 204 No Content (nova's api-ref, Delete Server); until it is gone the
    server shows task_state "deleting", then 404 itemNotFound. A delete the compute host fails
    leaves the server in ERROR with its fault and no task (what the adapter asks again)."""
    fake, http, host = cloud
    fake.fail_deletes = 1
    failed = nova(http, "DELETE", f"/servers/{server_id(host)}", SERVER_MV)
    assert failed.status_code == 204 and not failed.content
    server = nova(http, "GET", f"/servers/{server_id(host)}", SERVER_MV).json()["server"]
    assert server["status"] == "ERROR" and server["OS-EXT-STS:task_state"] is None and server["fault"]["message"]
    answer = nova(http, "DELETE", f"/servers/{server_id(host)}", SERVER_MV)
    assert answer.status_code == 204 and "Content-Type" not in answer.headers
    going = nova(http, "GET", f"/servers/{server_id(host)}", SERVER_MV).json()["server"]
    assert going["OS-EXT-STS:task_state"] == "deleting"
    time.sleep(0.25)
    gone = nova(http, "GET", f"/servers/{server_id(host)}", SERVER_MV)
    assert gone.status_code == 404 and gone.json()["itemNotFound"]["code"] == 404
    assert nova(http, "DELETE", f"/servers/{server_id(host)}", SERVER_MV).status_code == 404


def test_a_throttled_call_answers_429_with_retry_after(cloud):
    """Rate limiting: 429 with a Retry-After header in whole seconds and the overLimit fault that
    echoes it ({code, message, details, retryAfter}), as nova's api/openstack/wsgi.py builds it
    (RateLimitFault, "This request was rate-limited.", and Fault.__call__, which copies
    Retry-After into `retryAfter` for 413 and 429); only the next matching call is refused."""
    fake, http, host = cloud
    fake.throttle_next("POST", r"/servers$", 2)
    fake.throttle_next("DELETE", r"/servers/", 1200)
    body = {"server": {"name": "host2", "flavorRef": fake._flavor_id(REGION, "b2-7"),
                       "imageRef": fake._image_id(REGION, "Debian 12"), "networks": "auto"}}
    refused = nova(http, "POST", "/servers", SERVER_MV, json=body)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    fault = refused.json()["overLimit"]
    assert set(fault) == {"code", "message", "details", "retryAfter"}
    assert fault["code"] == 429 and fault["retryAfter"] == "2" and fault["message"] == "This request was rate-limited."
    assert nova(http, "POST", "/servers", SERVER_MV, json=body).status_code == 202
    held = nova(http, "DELETE", f"/servers/{server_id(host)}", SERVER_MV)
    assert held.status_code == 429 and held.headers["Retry-After"] == held.json()["overLimit"]["retryAfter"] == "1200"
    assert nova(http, "DELETE", f"/servers/{server_id(host)}", SERVER_MV).status_code == 204

def test_keypair_get_import_and_delete(cloud):
    """os-keypairs: GET /{name} ({NOVA}os-keypairs/keypairs-get-resp.json: created_at, deleted,
    deleted_at, fingerprint, id, name, public_key, updated_at, user_id; `type` from 2.2); POST an
    imported key ({NOVA}os-keypairs/keypairs-import-post-resp.json: 200, and from 2.2
    {NOVA}os-keypairs/v2.2/keypairs-post-resp.json less private_key: 201 with type "ssh"); the
    fingerprint is the MD5 of the key, colon-separated; 409 conflictingRequest when it exists;
    DELETE 202 before 2.2, 204 from it (nova's keypairs controller); unknown: 404 itemNotFound."""
    fake, http, _ = cloud
    name = _keypair_name(KEY)
    shown = nova(http, "GET", f"/os-keypairs/{name}", KEYPAIR_MV)
    assert shown.status_code == 200
    assert set(shown.json()["keypair"]) == {"created_at", "deleted", "deleted_at", "fingerprint", "id", "name",
                                            "public_key", "updated_at", "user_id", "type"}
    assert shown.json()["keypair"]["fingerprint"] == fingerprint(KEY) and name.endswith(fingerprint(KEY).replace(":", ""))
    assert "type" not in nova(http, "GET", f"/os-keypairs/{name}", "2.1").json()["keypair"]
    made = nova(http, "POST", "/os-keypairs", KEYPAIR_MV, json={"keypair": {"name": "other", "public_key": OTHER_KEY}})
    assert made.status_code == 201
    assert made.json()["keypair"] == {"name": "other", "public_key": OTHER_KEY, "fingerprint": fingerprint(OTHER_KEY),
                                      "user_id": fake.user_id, "type": "ssh"}
    old = nova(http, "POST", "/os-keypairs", "2.1", json={"keypair": {"name": "old", "public_key": OTHER_KEY}})
    assert old.status_code == 200 and set(old.json()["keypair"]) == {"name", "public_key", "fingerprint", "user_id"}
    again = nova(http, "POST", "/os-keypairs", KEYPAIR_MV, json={"keypair": {"name": "other", "public_key": OTHER_KEY}})
    assert again.status_code == 409 and again.json()["conflictingRequest"]["message"] == "Key pair 'other' already exists."
    assert nova(http, "DELETE", "/os-keypairs/other", KEYPAIR_MV).status_code == 204
    assert nova(http, "DELETE", "/os-keypairs/old", "2.1").status_code == 202
    missing = nova(http, "GET", "/os-keypairs/other", KEYPAIR_MV)
    assert missing.status_code == 404
    assert missing.json()["itemNotFound"]["message"] == f"Keypair other not found for user {fake.user_id}"


# --- Glance and Neutron --------------------------------------------------------------------------

def test_glance_versions_and_images(cloud):
    """Glance: GET {image}/ ({SDK}image-version.json: 300, versions[] of id, status, links) and GET
    /v2/images?name= (glance api-ref, images-list-response.json: images[], schema "/v2/schemas/images",
    first; each image with id, name, status "active", visibility, container_format, disk_format,
    min_disk, min_ram, size, checksum, protected, owner, tags, created_at, updated_at, self, file,
    schema); an unknown id: 404."""
    _, http, _ = cloud
    versions = http.get(f"/image/{REGION}/")
    assert versions.status_code == 300
    assert all({"id", "status", "links"} <= set(v) for v in versions.json()["versions"])
    answer = http.get(f"/image/{REGION}/v2/images", params={"name": "Debian 12"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["schema"] == "/v2/schemas/images" and body["first"] == "/v2/images"
    (image,) = body["images"]
    assert {"id", "name", "status", "visibility", "container_format", "disk_format", "min_disk", "min_ram", "size",
            "checksum", "protected", "owner", "tags", "created_at", "updated_at", "self", "file", "schema"} <= set(image)
    assert image["status"] == "active" and image["self"] == f"/v2/images/{image['id']}"
    assert http.get(f"/image/{REGION}/v2/images/{image['id']}").json() == image
    assert http.get(f"/image/{REGION}/v2/images/nope").status_code == 404


def test_neutron_networks(cloud):
    """Neutron: GET /v2.0/networks/Ext-Net (what openstacksdk's find_network tries first: 404
    {"NeutronError": {type NetworkNotFound, message, detail}}), then GET /v2.0/networks?name=Ext-Net
    (neutron-lib api-ref/source/v2/samples/networks/networks-list-response.json: networks[] of id,
    name, status, admin_state_up, router:external, shared, subnets, project_id, tenant_id, mtu,
    availability_zones, availability_zone_hints, port_security_enabled, revision_number, tags,
    description, created_at, updated_at)."""
    _, http, _ = cloud
    missing = http.get(f"/network/{REGION}/v2.0/networks/Ext-Net")
    assert missing.status_code == 404
    assert missing.json()["NeutronError"]["type"] == "NetworkNotFound"
    assert set(missing.json()["NeutronError"]) == {"type", "message", "detail"}
    answer = http.get(f"/network/{REGION}/v2.0/networks", params={"name": "Ext-Net"})
    assert answer.status_code == 200
    (net,) = answer.json()["networks"]
    assert {"id", "name", "status", "admin_state_up", "router:external", "shared", "subnets", "project_id",
            "tenant_id", "mtu", "availability_zones", "availability_zone_hints", "port_security_enabled",
            "revision_number", "tags", "description", "created_at", "updated_at"} <= set(net)
    assert net["status"] == "ACTIVE" and net["router:external"] is True
    assert http.get(f"/network/{REGION}/v2.0/networks/{net['id']}").json() == {"network": net}


# --- the OVH API ---------------------------------------------------------------------------------

def test_ovh_auth_time(cloud):
    """GET /1.0/auth/time (OVH API schema, /auth: the server's time, a long), which python-ovh
    reads once to sign its requests; every answer carries X-OVH-Query-Id."""
    fake, http, _ = cloud
    answer = http.get("/1.0/auth/time")
    assert answer.status_code == 200 and abs(answer.json() - time.time()) < 5
    assert answer.headers["X-OVH-Query-Id"]


def test_ovh_project_flavors_and_the_refusals(cloud):
    """GET /1.0/cloud/project/{serviceName}/flavor?region= (OVH API schema /cloud, cloud.flavor.Flavor:
    available, capabilities[] {enabled, name}, disk, id, inboundBandwidth, name, osType,
    outboundBandwidth, planCodes {hourly, monthly}, quota, ram, region, type, vcpus), signed;
    refusals as the API answers them: 403 {errorCode INVALID_CREDENTIAL, httpCode "403 Forbidden",
    message "This credential is not valid"} (ovh/php-ovh #56), 400 INVALID_SIGNATURE "400 Bad
    Request" (ovh/php-ovh #62), an unknown project 404 {class "Client::NotFound", message "This
    service does not exist"} (ovh/terraform-provider-ovh #1377)."""
    fake, http, _ = cloud
    path = f"/cloud/project/{fake.project_id}/flavor?region={REGION}"
    answer = http.get(f"/1.0{path}", headers=signed(fake, "GET", path))
    assert answer.status_code == 200
    rows = answer.json()
    assert all(set(r) == {"available", "capabilities", "disk", "id", "inboundBandwidth", "name", "osType",
                          "outboundBandwidth", "planCodes", "quota", "ram", "region", "type", "vcpus"} for r in rows)
    b2 = next(r for r in rows if r["name"] == "b2-7")
    nova_b2 = next(f for f in nova(http, "GET", "/flavors/detail", FLAVOR_MV).json()["flavors"] if f["name"] == "b2-7")
    assert b2["id"] == nova_b2["id"] and b2["region"] == REGION and b2["available"] is True
    assert b2["planCodes"] == {"hourly": "b2-7.consumption", "monthly": "b2-7.monthly.postpaid"}
    assert all(set(c) == {"name", "enabled"} for c in b2["capabilities"])
    fake.unavailable.add((REGION, "b2-7"))
    rows = http.get(f"/1.0{path}", headers=signed(fake, "GET", path)).json()
    assert next(r for r in rows if r["name"] == "b2-7")["available"] is False
    wrong_ck = dict(signed(fake, "GET", path), **{"X-Ovh-Consumer": "nope"})
    refused = http.get(f"/1.0{path}", headers=wrong_ck)
    assert refused.status_code == 403 and refused.json() == {
        "errorCode": "INVALID_CREDENTIAL", "httpCode": "403 Forbidden", "message": "This credential is not valid"}
    bad_sig = dict(signed(fake, "GET", path), **{"X-Ovh-Signature": "$1$0"})
    refused = http.get(f"/1.0{path}", headers=bad_sig)
    assert refused.status_code == 400 and refused.json()["errorCode"] == "INVALID_SIGNATURE"
    assert refused.json()["httpCode"] == "400 Bad Request"
    other = f"/cloud/project/{'0' * 32}/flavor"
    missing = http.get(f"/1.0{other}", headers=signed(fake, "GET", other))
    assert missing.status_code == 404
    assert missing.json() == {"class": "Client::NotFound", "message": "This service does not exist"}


def test_ovh_public_price_catalog(cloud):
    """GET /1.0/order/catalog/public/cloud?ovhSubsidiary=FR (OVH API schema, order.catalog.publik.Catalog:
    catalogId, locale {currencyCode, subsidiary, taxRate}, plans, addons[] of planCode, invoiceName,
    product, pricingType, pricings[] {capacities, commitment, description, interval, intervalUnit, mode,
    mustBeCompleted, phase, price (in 1e-8 of the currency), promotions, quantity, repeat, strategy,
    tax, type}), public: no signature."""
    _, http, _ = cloud
    answer = http.get("/1.0/order/catalog/public/cloud", params={"ovhSubsidiary": "FR"})
    assert answer.status_code == 200
    catalog = answer.json()
    assert {"catalogId", "locale", "plans", "addons", "products", "planFamilies"} <= set(catalog)
    assert catalog["locale"]["currencyCode"] == "EUR" and catalog["locale"]["subsidiary"] == "FR"
    addon = next(a for a in catalog["addons"] if a["planCode"] == "b2-7.consumption")
    assert {"planCode", "invoiceName", "product", "pricingType", "pricings"} <= set(addon)
    (pricing,) = addon["pricings"]
    assert {"capacities", "commitment", "description", "interval", "intervalUnit", "mode", "mustBeCompleted",
            "phase", "price", "promotions", "quantity", "repeat", "strategy", "tax", "type"} <= set(pricing)
    assert pricing["capacities"] == ["consumption"] and pricing["intervalUnit"] == "hour"
    assert pricing["price"] == 6_810_000                    # 0.0681 EUR an hour
