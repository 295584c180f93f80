"""An OVH Public Cloud on loopback: Keystone v3, Nova, Neutron, Glance and the OVH API.

It serves the documented response shapes that the real SDKs (openstacksdk/keystoneauth and
python-ovh) read, with all state in memory, so `scitq.providers.ovh` is tested through the
real client code and nothing leaves 127.0.0.1:

    with FakeOpenStack() as cloud:
        provider = OVHProvider(cloud.provider_config())
        cloud.fail_next_create = "quota"          # or "no_valid_host"

Servers go BUILD -> ACTIVE `build_delay` seconds after creation (worked out on each read: no
background thread); a deleted server shows task_state "deleting" for `delete_delay` seconds,
then answers 404. As nova's api samples and its keypairs controller say, keypair create answers
200 before microversion 2.2 and 201 from it, keypair delete 202 then 204; the compute endpoint
in the catalog carries no project id (OVH's, `.../v2.1`). OVH's /cloud/project/{id}/flavor rows
say `available: false` for flavors out of stock (`unavailable`).

Failures to inject: `fail_next_create` ("quota", "no_valid_host"), `fail_deletes` (the next N
server deletes are accepted but the server ends in ERROR, as a failed delete does), `inject`
(any status, body and headers on the next matching call), `throttle_next` (a 429 with Retry-After,
as nova's overLimit fault). Service calls need a token Keystone issued; OVH API calls need python-ovh's
request signature. `requests` logs every (method, path) for assertions.
"""
import hashlib
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# name, vCPUs, RAM (MiB), disk (GiB), hourly price in EUR (None: absent from the price
# catalog), OVH osType. Shapes and prices after OVH's b2/c2/t1 ranges.
FLAVORS = [
    ("b2-7", 2, 7000, 50, 0.0681, "linux"),
    ("b2-15", 4, 15000, 100, 0.1361, "linux"),
    ("c2-30", 8, 30000, 200, 0.2722, "linux"),
    ("t1-45", 8, 45000, 400, 1.9, "linux"),
    ("win-b2-7", 2, 7000, 50, 0.1081, "windows"),
    ("d2-2", 1, 2000, 25, None, "linux"),
]
IMAGES = [("Debian 12", "debian"), ("Ubuntu 24.04", "ubuntu")]
NOVA_MAX_MICROVERSION = "2.79"          # what the fake Nova advertises by default
QUOTA_BODY = {"forbidden": {"message": "Quota exceeded for cores: Requested 8, but already used 16 of 20 cores",
                            "code": 403}}
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
_NS = uuid.UUID("6b1f3a52-9d1e-4c1e-9a63-5d1c0f1f0a11")   # stable ids for flavors, images, networks


def _iso(ts=None):
    return datetime.fromtimestamp(ts or time.time(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mv(text):
    major, minor = text.split(".")
    return int(major), int(minor)


def fingerprint(public_key):
    """Nova's keypair fingerprint: MD5 of the decoded key blob, colon-separated."""
    import base64
    digest = hashlib.md5(base64.b64decode(public_key.split()[1])).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


class _Request:
    def __init__(self, method, target, headers, body):
        self.method = method
        parts = urlsplit(target)
        self.path = unquote(parts.path)
        self.target = target                     # path and query as sent (OVH signs it)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openstack"
    disable_nagle_algorithm = True      # headers and body in one segment: no delayed-ACK stalls
    wbufsize = 1 << 16                  # flushed by the server after each request

    def log_message(self, *args):
        pass

    def _dispatch(self):
        length = int(self.headers.get("Content-Length") or 0)
        req = _Request(self.command, self.path, self.headers, self.rfile.read(length) if length else b"")
        try:
            status, headers, body = self.server.cloud.handle(req)
        except Exception as exc:                  # a bug in the fake: answer it rather than hang
            status, headers, body = 500, {}, {"computeFault": {"message": repr(exc), "code": 500}}
        if isinstance(body, (dict, list, int)):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = (body or "").encode(), "text/plain"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status != 204:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class FakeOpenStack:
    """The fake cloud. Tweak `fail_next_create`, `limits`, `build_delay` between calls."""

    def __init__(self, regions=("GRA11", "SBG5"), build_delay=0.1, delete_delay=0.05,
                 username="scitq-user", password="s3cret", project_name="scitq-project",
                 nova_max_microversion=NOVA_MAX_MICROVERSION):
        self.regions = list(regions)
        self.nova_max_microversion = nova_max_microversion   # "2.1": a Nova without microversions
        self.build_delay = build_delay
        self.delete_delay = delete_delay
        self.username, self.password = username, password
        self.project_name = project_name
        self.project_id = uuid.uuid5(_NS, project_name).hex
        self.user_id = uuid.uuid5(_NS, username).hex
        self.ovh_keys = {"application_key": "fake-ak", "application_secret": "fake-as",
                         "consumer_key": "fake-ck"}
        self.fail_next_create = None           # "quota" | "no_valid_host": the next POST /servers only
        self.fail_deletes = 0                   # the next N server deletes end in ERROR, not gone
        self.unavailable = set()                # (region, flavor name) out of stock in OVH's API
        self.limits = {r: {"cores": 20, "instances": 10, "ram": 51200} for r in self.regions}
        self.servers = {r: {} for r in self.regions}
        self.keypairs = {r: {} for r in self.regions}
        self.tokens = set()
        self.requests = []                      # (method, path) of every call, in order
        self._injected = []                     # [method, path regex, status, body, headers]: next call
        self._lock = threading.RLock()
        self._ip_seq = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.cloud = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.ovh_endpoint = f"scitq-fake-{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openstack", daemon=True)
        self._thread.start()

    # --- life and configuration ------------------------------------------------------------

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        try:
            import ovh.client
            ovh.client.ENDPOINTS.pop(self.ovh_endpoint, None)
        except ImportError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def auth(self, password=None):
        """The `auth` section of a clouds.yaml entry for this cloud."""
        return {"auth_url": self.url + "/v3", "username": self.username,
                "password": self.password if password is None else password,
                "project_id": self.project_id, "user_domain_name": "Default",
                "project_domain_name": "Default"}

    def provider_config(self, **extra):
        """An OVHProvider config pointing at this fake (its OVH API endpoint registered by name
        in python-ovh's table, which only knows the real ones)."""
        import ovh.client
        ovh.client.ENDPOINTS[self.ovh_endpoint] = self.url + "/1.0"
        config = {"auth": self.auth(), "endpoint": self.ovh_endpoint, "project_id": self.project_id,
                  "poll_interval": 0.05, "create_timeout": 10, "delete_timeout": 10, **self.ovh_keys}
        config.update(extra)
        return config

    def inject(self, method, path_pattern, status, body=None, headers=None):
        """Answer the next `method` call whose path matches `path_pattern` with `status`/`body`
        (and `headers`)."""
        with self._lock:
            self._injected.append([method, re.compile(path_pattern), status, body, dict(headers or {})])

    def throttle_next(self, method, path_pattern, retry_after):
        """Nova's rate limiting: 429 with Retry-After (integer seconds) and the overLimit fault
        that echoes it (nova/api/openstack/wsgi.py: RateLimitFault, and Fault for 413/429)."""
        self.inject(method, path_pattern, 429, {"overLimit": {
            "code": 429, "message": "This request was rate-limited.",
            "details": f"Only 10 {method} request(s) can be made to * every MINUTE.",
            "retryAfter": str(retry_after)}}, headers={"Retry-After": str(retry_after)})

    def count(self, method, path_pattern):
        rx = re.compile(path_pattern)
        return sum(1 for m, p in self.requests if m == method and rx.search(p))

    def live_servers(self, region=None):
        with self._lock:
            regions = [region] if region else self.regions
            return [s for r in regions for s in list(self.servers[r].values()) if self._tick(r, s)]

    # --- dispatch --------------------------------------------------------------------------

    def handle(self, req):
        with self._lock:
            self.requests.append((req.method, req.path))
            for i, (method, rx, status, body, headers) in enumerate(self._injected):
                if method == req.method and rx.search(req.path):
                    del self._injected[i]
                    return status, headers, body
            path = req.path.rstrip("/") or "/"
            if path == "/" or path.startswith("/v3"):
                return self._keystone(req, path)
            if path.startswith("/1.0/"):
                return self._ovh(req, path[len("/1.0"):])
            m = re.match(r"^/(compute|network|image)/([^/]+)(/.*)?$", path)
            if not m or m.group(2) not in self.regions:
                return 404, {}, {"error": {"code": 404, "message": f"no such endpoint {path}"}}
            service, region, rest = m.group(1), m.group(2), m.group(3) or "/"
            if req.headers.get("X-Auth-Token") not in self.tokens and rest != "/":
                return 401, {}, {"error": {"code": 401, "title": "Unauthorized",
                                           "message": "The request you have made requires authentication."}}
            handler = {"compute": self._compute, "network": self._network, "image": self._image_service}[service]
            return handler(req, region, rest)

    # --- Keystone --------------------------------------------------------------------------

    def _identity_version(self):
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": self.url + "/v3/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.identity-v3+json"}]}

    def _keystone(self, req, path):
        if path == "/" and req.method == "GET":
            return 300, {}, {"versions": {"values": [self._identity_version()]}}
        if path == "/v3" and req.method == "GET":
            return 200, {}, {"version": self._identity_version()}
        if path == "/v3/auth/tokens" and req.method == "POST":
            return self._issue_token(req.json or {})
        if path == "/v3/regions" and req.method == "GET":
            return 200, {}, {"regions": [{"id": r, "description": "", "parent_region_id": None,
                                          "links": {"self": f"{self.url}/v3/regions/{r}"}}
                                         for r in self.regions], "links": {"next": None}}
        return 404, {}, {"error": {"code": 404, "title": "Not Found", "message": path}}

    def _issue_token(self, body):
        identity = body.get("auth", {}).get("identity", {})
        user = identity.get("password", {}).get("user", {})
        if (user.get("name") not in (self.username, None) or user.get("id") not in (self.user_id, None)
                or user.get("password") != self.password):
            return 401, {}, {"error": {"code": 401, "title": "Unauthorized",
                                       "message": "The request you have made requires authentication."}}
        token = uuid.uuid4().hex
        self.tokens.add(token)
        domain = {"id": "default", "name": "Default"}
        catalog = [self._service("identity", "keystone", lambda r: self.url + "/v3")]
        catalog.append(self._service("compute", "nova", lambda r: f"{self.url}/compute/{r}/v2.1"))
        catalog.append(self._service("network", "neutron", lambda r: f"{self.url}/network/{r}/"))
        catalog.append(self._service("image", "glance", lambda r: f"{self.url}/image/{r}/"))
        now = time.time()
        return 201, {"X-Subject-Token": token}, {"token": {
            "methods": ["password"], "audit_ids": [uuid.uuid4().hex[:22]],
            "issued_at": _iso(now), "expires_at": _iso(now + 86400), "is_domain": False,
            "user": {"id": self.user_id, "name": self.username, "domain": domain, "password_expires_at": None},
            "project": {"id": self.project_id, "name": self.project_name, "domain": domain},
            "roles": [{"id": uuid.uuid5(_NS, "member").hex, "name": "member"}],
            "catalog": catalog}}

    def _service(self, kind, name, url):
        return {"type": kind, "name": name, "id": uuid.uuid5(_NS, kind).hex,
                "endpoints": [{"id": uuid.uuid5(_NS, kind + r).hex, "interface": "public",
                               "region": r, "region_id": r, "url": url(r)} for r in self.regions]}

    # --- Nova ------------------------------------------------------------------------------

    def _nova_version(self, region):
        return {"id": "v2.1", "status": "CURRENT", "version": self.nova_max_microversion, "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{self.url}/compute/{region}/v2.1/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    @staticmethod
    def _nova_error(status, kind, message):
        return status, {}, {kind: {"message": message, "code": status}}

    def _compute(self, req, region, rest):
        if rest == "/":
            return 200, {}, {"versions": [self._nova_version(region)]}
        if rest == "/v2.1":
            return 200, {}, {"version": self._nova_version(region)}
        if not rest.startswith("/v2.1/"):
            return self._nova_error(404, "itemNotFound", "Not found")
        asked = req.headers.get("OpenStack-API-Version", "").replace("compute", "").strip() \
            or req.headers.get("X-OpenStack-Nova-API-Version") or "2.1"
        mv = _mv(asked if asked != "latest" else self.nova_max_microversion)
        if mv > _mv(self.nova_max_microversion):
            return self._nova_error(406, "computeFault", f"Version {asked} is not supported by the API.")
        parts = rest[len("/v2.1/"):].split("/")
        headers = {"OpenStack-API-Version": f"compute {mv[0]}.{mv[1]}",
                   "X-OpenStack-Nova-API-Version": f"{mv[0]}.{mv[1]}", "Vary": "OpenStack-API-Version"}
        status, own, body = self._nova_route(req, region, parts, mv)
        return status, {**headers, **own}, body

    def _nova_route(self, req, region, parts, mv):
        head, ident = parts[0], (parts[1] if len(parts) > 1 else None)
        if head == "flavors":
            if ident in (None, "detail") and req.method == "GET":
                return 200, {}, {"flavors": [self._flavor(region, f, mv) for f in FLAVORS]}
            flavor = next((f for f in FLAVORS if self._flavor_id(region, f[0]) == ident), None)
            if flavor is None:
                return self._nova_error(404, "itemNotFound", f"Flavor {ident} could not be found.")
            return 200, {}, {"flavor": self._flavor(region, flavor, mv)}
        if head == "servers":
            if ident is None and req.method == "POST":
                return self._create_server(req, region, mv)
            if ident in (None, "detail") and req.method == "GET":
                servers = [s for s in list(self.servers[region].values()) if self._tick(region, s)]
                if "name" in req.query:
                    servers = [s for s in servers if re.search(req.query["name"], s["name"])]
                if "status" in req.query:
                    servers = [s for s in servers if s["status"] == req.query["status"].upper()]
                if ident is None:
                    return 200, {}, {"servers": [{"id": s["id"], "name": s["name"], "links": []} for s in servers]}
                return 200, {}, {"servers": [self._server(region, s, mv) for s in servers]}
            server = self.servers[region].get(ident)
            if server is None or not self._tick(region, server):
                return self._nova_error(404, "itemNotFound", f"Instance {ident} could not be found.")
            if req.method == "GET" and len(parts) == 2:
                return 200, {}, {"server": self._server(region, server, mv)}
            if req.method == "DELETE" and len(parts) == 2:
                return self._delete_server(server)
            return self._nova_error(405, "badMethod", "method not allowed")
        if head == "os-keypairs":
            return self._keypairs(req, region, ident, mv)
        if head == "limits" and req.method == "GET":
            return 200, {}, {"limits": {"absolute": self._absolute_limits(region, mv), "rate": []}}
        return self._nova_error(404, "itemNotFound", "/".join(parts))

    def _delete_server(self, server):
        """204; the server goes after `delete_delay`, or (fail_deletes) ends in ERROR."""
        if self.fail_deletes > 0:
            self.fail_deletes -= 1
            server.update(status="ERROR", vm_state="error", task_state=None, fault={
                "code": 500, "created": _iso(), "message": "Failed to delete the instance (injected)"})
        elif server.get("deleted_at") is None:
            server["deleted_at"] = time.monotonic() + self.delete_delay
            server["task_state"] = "deleting"
        return 204, {}, None

    def _links(self, region, collection, ident):
        """A nova resource's links: "self" under the versioned endpoint, "bookmark" without it."""
        return [{"rel": "self", "href": f"{self.url}/compute/{region}/v2.1/{collection}/{ident}"},
                {"rel": "bookmark", "href": f"{self.url}/compute/{region}/{collection}/{ident}"}]

    def _flavor_id(self, region, name):
        return str(uuid.uuid5(_NS, f"{region}/flavor/{name}"))

    def _flavor(self, region, flavor, mv):
        name, vcpus, ram, disk, _, _ = flavor
        fid = self._flavor_id(region, name)
        body = {"id": fid, "name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
                "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
                "os-flavor-access:is_public": True, "rxtx_factor": 1.0,
                "swap": 0 if mv >= (2, 75) else "",
                "links": self._links(region, "flavors", fid)}
        if mv >= (2, 55):
            body["description"] = None
        if mv >= (2, 61):
            body["extra_specs"] = {}
        return body

    def _absolute_limits(self, region, mv):
        live = self.live_servers(region)
        limits = self.limits[region]
        absolute = {"maxTotalCores": limits["cores"], "totalCoresUsed": sum(s["vcpus"] for s in live),
                    "maxTotalInstances": limits["instances"], "totalInstancesUsed": len(live),
                    "maxTotalRAMSize": limits["ram"], "totalRAMUsed": sum(s["ram"] for s in live),
                    "maxTotalKeypairs": 100, "maxServerMeta": 128, "maxImageMeta": 128,
                    "maxServerGroups": 10, "maxServerGroupMembers": 10, "totalServerGroupsUsed": 0}
        if mv < (2, 36):
            absolute.update(maxSecurityGroupRules=-1, maxSecurityGroups=-1, maxTotalFloatingIps=-1,
                            totalSecurityGroupsUsed=0, totalFloatingIpsUsed=0)
        if mv < (2, 57):
            absolute.update(maxPersonality=5, maxPersonalitySize=10240)
        return absolute

    def _create_server(self, req, region, mv):
        body = (req.json or {}).get("server")
        if not body or not body.get("name"):
            return self._nova_error(400, "badRequest", "Invalid input for field/attribute server.")
        if mv >= (2, 37) and "networks" not in body:
            return self._nova_error(400, "badRequest", "Invalid input for field/attribute server. "
                                                       "Value: ... 'networks' is a required property")
        flavor = next((f for f in FLAVORS if self._flavor_id(region, f[0]) == body.get("flavorRef")), None)
        if flavor is None:
            return self._nova_error(400, "badRequest", f"Flavor {body.get('flavorRef')} could not be found.")
        if body.get("imageRef") not in {self._image_id(region, n) for n, _ in IMAGES}:
            return self._nova_error(400, "badRequest", f"Image {body.get('imageRef')} could not be found.")
        key_name = body.get("key_name")
        if key_name is not None and key_name not in self.keypairs[region]:
            return self._nova_error(400, "badRequest", "Invalid key_name provided.")
        failure, self.fail_next_create = self.fail_next_create, None
        if failure == "quota":
            return 403, {}, QUOTA_BODY
        live = self.live_servers(region)
        limits = self.limits[region]
        for resource, need, used, limit in (
                ("instances", 1, len(live), limits["instances"]),
                ("cores", flavor[1], sum(s["vcpus"] for s in live), limits["cores"]),
                ("ram", flavor[2], sum(s["ram"] for s in live), limits["ram"])):
            if used + need > limit:
                return self._nova_error(403, "forbidden", f"Quota exceeded for {resource}: Requested "
                                                          f"{need}, but already used {used} of {limit} {resource}")
        sid = str(uuid.uuid4())
        now = time.time()
        self.servers[region][sid] = {
            "id": sid, "name": body["name"], "status": "BUILD", "task_state": "scheduling",
            "vm_state": "building", "power_state": 0, "created": _iso(now), "updated": _iso(now),
            "ready_at": time.monotonic() + self.build_delay, "deleted_at": None,
            "fail": failure, "flavor": flavor[0], "vcpus": flavor[1], "ram": flavor[2], "disk": flavor[3],
            "image": body["imageRef"], "key_name": key_name, "metadata": dict(body.get("metadata") or {}),
            "user_data": body.get("user_data"), "networks": body.get("networks"),
            "addresses": {}, "fault": None, "launched_at": None}
        return 202, {"Location": f"{self.url}/compute/{region}/v2.1/servers/{sid}"}, {"server": {
            "id": sid, "adminPass": uuid.uuid4().hex[:12], "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": "default"}],
            "links": self._links(region, "servers", sid)}}

    def _tick(self, region, server):
        """Move a server along its life; None once it is gone."""
        now = time.monotonic()
        if server["deleted_at"] is not None and now >= server["deleted_at"]:
            self.servers[region].pop(server["id"], None)
            return None
        if server["status"] == "BUILD" and now >= server["ready_at"]:
            server["updated"] = _iso()
            if server["fail"] == "no_valid_host":
                server.update(status="ERROR", vm_state="error", task_state=None, fault={
                    "code": 500, "created": _iso(), "message": NO_VALID_HOST})
            else:
                self._ip_seq += 1
                n = self._ip_seq
                server.update(status="ACTIVE", vm_state="active", power_state=1, launched_at=_iso(),
                              task_state=server["task_state"] if server["deleted_at"] else None)
                server["addresses"] = {"Ext-Net": [
                    {"addr": f"2001:41d0:304:100::{n:x}", "version": 6, "OS-EXT-IPS:type": "fixed",
                     "OS-EXT-IPS-MAC:mac_addr": f"fa:16:3e:00:{n // 256:02x}:{n % 256:02x}"},
                    {"addr": f"51.75.{n // 250}.{n % 250 + 2}", "version": 4, "OS-EXT-IPS:type": "fixed",
                     "OS-EXT-IPS-MAC:mac_addr": f"fa:16:3e:00:{n // 256:02x}:{n % 256:02x}"}]}
        return server

    def _server(self, region, s, mv):
        if mv >= (2, 47):
            flavor = {"original_name": s["flavor"], "vcpus": s["vcpus"], "ram": s["ram"], "disk": s["disk"],
                      "ephemeral": 0, "swap": 0, "extra_specs": {}}
        else:
            fid = self._flavor_id(region, s["flavor"])
            flavor = {"id": fid, "links": [{"rel": "bookmark", "href": f"{self.url}/compute/{region}/flavors/{fid}"}]}
        body = {
            "id": s["id"], "name": s["name"], "status": s["status"], "tenant_id": self.project_id,
            "user_id": self.user_id, "metadata": s["metadata"], "created": s["created"], "updated": s["updated"],
            "addresses": s["addresses"], "flavor": flavor, "key_name": s["key_name"],
            "image": {"id": s["image"], "links": []}, "hostId": "", "progress": 0,
            "accessIPv4": "", "accessIPv6": "", "config_drive": "", "OS-DCF:diskConfig": "MANUAL",
            "OS-EXT-AZ:availability_zone": "nova", "OS-EXT-STS:task_state": s["task_state"],
            "OS-EXT-STS:vm_state": s["vm_state"], "OS-EXT-STS:power_state": s["power_state"],
            "OS-SRV-USG:launched_at": s["launched_at"], "OS-SRV-USG:terminated_at": None,
            "os-extended-volumes:volumes_attached": [], "security_groups": [{"name": "default"}],
            "links": self._links(region, "servers", s["id"])}
        if s["fault"]:
            body["fault"] = s["fault"]
        if mv >= (2, 9):
            body["locked"] = False
        if mv >= (2, 19):
            body["description"] = None
        if mv >= (2, 26):
            body["tags"] = []
        return body

    def _keypairs(self, req, region, name, mv):
        pairs = self.keypairs[region]
        if name is None and req.method == "GET":
            return 200, {}, {"keypairs": [{"keypair": {k: v for k, v in kp.items() if k in
                                                       ("name", "public_key", "fingerprint", "type")}}
                                          for kp in pairs.values()]}
        if name is None and req.method == "POST":
            return self._create_keypair(req, region, mv)
        if name not in pairs:
            return self._nova_error(404, "itemNotFound", f"Keypair {name} not found for user {self.user_id}")
        if req.method == "GET":
            return 200, {}, {"keypair": {k: v for k, v in pairs[name].items() if k != "type" or mv >= (2, 2)}}
        if req.method == "DELETE":
            del pairs[name]
            return (204 if mv >= (2, 2) else 202), {}, None
        return self._nova_error(405, "badMethod", "method not allowed")

    def _create_keypair(self, req, region, mv):
        """200 before microversion 2.2, 201 from it (with `type`), as nova's controller answers."""
        pairs = self.keypairs[region]
        body = (req.json or {}).get("keypair") or {}
        if not body.get("name") or not body.get("public_key"):
            return self._nova_error(400, "badRequest", "Invalid input for field/attribute keypair.")
        if body["name"] in pairs:
            return self._nova_error(409, "conflictingRequest", f"Key pair '{body['name']}' already exists.")
        try:
            fp = fingerprint(body["public_key"])
        except (IndexError, ValueError):
            return self._nova_error(400, "badRequest", "Keypair data is invalid: failed to generate fingerprint")
        pairs[body["name"]] = {"name": body["name"], "public_key": body["public_key"], "fingerprint": fp,
                               "user_id": self.user_id, "type": body.get("type", "ssh"),
                               "id": len(pairs) + 1, "created_at": _iso(), "deleted": False,
                               "deleted_at": None, "updated_at": None}
        kp = pairs[body["name"]]
        shown = ("name", "public_key", "fingerprint", "user_id") + (("type",) if mv >= (2, 2) else ())
        return (201 if mv >= (2, 2) else 200), {}, {"keypair": {k: kp[k] for k in shown}}

    # --- Neutron and Glance ----------------------------------------------------------------

    def _network(self, req, region, rest):
        if rest == "/":
            return 200, {}, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"{self.url}/network/{region}/v2.0/"}]}]}
        net_id = str(uuid.uuid5(_NS, f"{region}/network/Ext-Net"))
        ext_net = {"id": net_id, "name": "Ext-Net", "status": "ACTIVE", "admin_state_up": True,
                   "router:external": True, "shared": False, "subnets": [str(uuid.uuid5(_NS, net_id))],
                   "tenant_id": "", "project_id": "", "mtu": 1500, "availability_zones": ["nova"],
                   "ipv4_address_scope": None, "ipv6_address_scope": None, "tags": [], "description": "",
                   "created_at": "2020-01-01T00:00:00Z", "updated_at": "2020-01-01T00:00:00Z",
                   "availability_zone_hints": [], "port_security_enabled": True, "revision_number": 1,
                   "is_default": False, "l2_adjacency": True, "qos_policy_id": None}
        if rest == "/v2.0/networks" and req.method == "GET":
            nets = [ext_net]
            for key in ("name", "id"):
                if key in req.query:
                    nets = [n for n in nets if n[key] == req.query[key]]
            return 200, {}, {"networks": nets}
        m = re.match(r"^/v2\.0/networks/([^/]+)$", rest)
        if m and req.method == "GET":
            if m.group(1) == net_id:
                return 200, {}, {"network": ext_net}
            return 404, {}, {"NeutronError": {"type": "NetworkNotFound", "detail": "",
                                              "message": f"Network {m.group(1)} could not be found."}}
        return 404, {}, {"NeutronError": {"type": "HTTPNotFound", "detail": "", "message": rest}}

    def _image_id(self, region, name):
        return str(uuid.uuid5(_NS, f"{region}/image/{name}"))

    def _image(self, region, name, user):
        iid = self._image_id(region, name)
        return {"id": iid, "name": name, "status": "active", "visibility": "public", "protected": False,
                "container_format": "bare", "disk_format": "qcow2", "min_disk": 0, "min_ram": 0,
                "size": 2147483648, "checksum": None, "os_hidden": False, "owner": "ovh", "tags": [],
                "created_at": "2024-06-01T00:00:00Z", "updated_at": "2024-06-01T00:00:00Z",
                "image_original_user": user, "self": f"/v2/images/{iid}", "file": f"/v2/images/{iid}/file",
                "schema": "/v2/schemas/image"}

    def _image_service(self, req, region, rest):
        if rest == "/":
            return 300, {}, {"versions": [{"id": "v2.9", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"{self.url}/image/{region}/v2/"}]}]}
        images = [self._image(region, n, u) for n, u in IMAGES]
        if rest == "/v2/images" and req.method == "GET":
            for key in ("name", "id", "status", "visibility"):
                if key in req.query:
                    images = [i for i in images if i[key] == req.query[key]]
            return 200, {}, {"images": images, "schema": "/v2/schemas/images", "first": "/v2/images"}
        m = re.match(r"^/v2/images/([^/]+)$", rest)
        if m and req.method == "GET":
            found = [i for i in images if i["id"] == m.group(1)]
            if found:
                return 200, {}, found[0]
            return 404, {}, f"404 Not Found\n\nNo image found with ID {m.group(1)}\n\n"
        return 404, {}, "404 Not Found"

    # --- the OVH API -----------------------------------------------------------------------

    @staticmethod
    def _ovh_error(status, code, message):
        """The OVH API's refusals: an authentication one names its errorCode and httpCode (status and
        reason), any other its class (Client::NotFound...)."""
        if code is None:
            return status, {}, {"class": f"Client::{HTTPStatus(status).phrase.replace(' ', '')}",
                                "message": message}
        return status, {}, {"errorCode": code, "httpCode": f"{status} {HTTPStatus(status).phrase}",
                            "message": message}

    def _ovh(self, req, path):
        status, headers, body = self._ovh_route(req, path)
        return status, {**headers, "X-OVH-Query-Id": f"EU.ext-1.{uuid.uuid4().hex}"}, body

    def _ovh_route(self, req, path):
        if path == "/auth/time":
            return 200, {}, int(time.time())
        if path == "/order/catalog/public/cloud" and req.method == "GET":
            return 200, {}, self._price_catalog(req.query.get("ovhSubsidiary", "FR"))
        if req.headers.get("X-Ovh-Application") != self.ovh_keys["application_key"]:
            return self._ovh_error(403, "INVALID_KEY", "This application key is invalid")
        if req.headers.get("X-Ovh-Consumer") != self.ovh_keys["consumer_key"]:
            return self._ovh_error(403, "INVALID_CREDENTIAL", "This credential is not valid")
        ts = req.headers.get("X-Ovh-Timestamp", "")
        signed = "+".join([self.ovh_keys["application_secret"], self.ovh_keys["consumer_key"], req.method,
                           self.url + req.target, req.raw.decode(), ts])
        if req.headers.get("X-Ovh-Signature") != "$1$" + hashlib.sha1(signed.encode()).hexdigest():
            return self._ovh_error(400, "INVALID_SIGNATURE", "Invalid signature")
        m = re.match(r"^/cloud/project/([^/]+)/flavor$", path)
        if m and req.method == "GET":
            if m.group(1) != self.project_id:
                return self._ovh_error(404, None, "This service does not exist")
            regions = [req.query["region"]] if "region" in req.query else self.regions
            return 200, {}, [self._ovh_flavor(r, f) for r in regions if r in self.regions for f in FLAVORS]
        return self._ovh_error(404, None, f"Got an invalid (or empty) URL: {path}")

    def _ovh_flavor(self, region, flavor):
        name, vcpus, ram, disk, _, os_type = flavor
        return {"id": self._flavor_id(region, name), "name": name, "region": region, "vcpus": vcpus,
                "ram": ram // 1000, "disk": disk, "type": "ovh.ssd.eg", "osType": os_type,
                "inboundBandwidth": 250, "outboundBandwidth": 250,
                "available": (region, name) not in self.unavailable, "quota": 10,
                "planCodes": {"hourly": f"{name}.consumption", "monthly": f"{name}.monthly.postpaid"},
                "capabilities": [{"name": "resize", "enabled": True}, {"name": "snapshot", "enabled": True}]}

    def _price_catalog(self, subsidiary):
        def pricing(price, unit, capacity):
            return {"capacities": [capacity], "commitment": 0, "description": f"Price per {unit}",
                    "interval": 1, "intervalUnit": unit, "mode": "consumption" if unit == "hour" else "default",
                    "mustBeCompleted": False, "phase": 0, "price": round(price * 1e8), "promotions": [],
                    "quantity": {"min": 1, "max": None}, "repeat": {"min": 1, "max": None},
                    "strategy": "tiered", "tax": 0, "type": "consumption" if unit == "hour" else "renew"}
        addons = []
        for name, *_, price, _ in FLAVORS:
            if price is None:
                continue
            for code, unit, capacity, amount in ((f"{name}.monthly.postpaid", "month", "renew", price * 365),
                                                 (f"{name}.consumption", "hour", "consumption", price)):
                addons.append({"planCode": code, "invoiceName": f"{name.upper()} instance",
                               "product": f"publiccloud-instance-{name}", "pricingType": "consumption",
                               "pricings": [pricing(amount, unit, capacity)], "configurations": [],
                               "addonFamilies": [], "family": None, "blobs": None})
        return {"catalogId": 4242, "locale": {"currencyCode": "EUR", "subsidiary": subsidiary, "taxRate": 20},
                "planFamilies": [], "products": [],
                "plans": [{"planCode": "project", "invoiceName": "Public Cloud Project",
                           "addonFamilies": [{"name": "instance", "addons": [a["planCode"] for a in addons]}],
                           "pricings": [], "product": "cloud", "pricingType": "consumption"}],
                "addons": addons}
