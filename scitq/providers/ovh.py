"""OVH Public Cloud: compute through OpenStack (openstacksdk: Nova, Glance, Neutron), prices
through the OVH API (python-ovh). Both SDKs are imported when first used (`scitq[ovh]`).

Config, every key optional (credentials otherwise come the usual way):
    cloud                 a clouds.yaml entry; else `auth` (a clouds.yaml-style auth dict, with
                          `auth_type`, default "password"); else the OS_* environment
    regions               regions to use (default: every region with a compute endpoint)
    image, user           default image name and its SSH user ("Debian 12", "debian")
    network               the public network servers attach to ("Ext-Net")
    endpoint, application_key, application_secret, consumer_key
                          the OVH API (else OVH_* environment / ovh.conf, as python-ovh reads them);
                          endpoint is a python-ovh name ("ovh-eu") or a base URL
    project_id            the OVH serviceName (default: the Keystone project id, the same thing)
    subsidiary            price catalog subsidiary ("FR": prices in EUR)
    create_timeout 600, delete_timeout 120, poll_interval 5, api_timeout 60, price_ttl 3600 (s)

Instance ids are "<region>/<Nova server id>": Nova ids are per region, and get/delete are not
told the region.

What a create makes: the server (its metadata {scitq: <name>} and the recruiter's tags), the
ports Nova makes for it on `network` (Nova deletes them with the server), and one keypair per
SSH key, "scitq-<md5 fingerprint>", shared by the servers booted with it. A failed create deletes
the server and a keypair it made, and waits until Nova no longer lists the server; a delete
that Nova leaves in ERROR is asked again, with back-off, until `delete_timeout`. Flavors OVH says
are out of stock (`available: false` in /cloud/project/{id}/flavor) are left out of the catalog
and refused before renting.

Throttling: openstacksdk retries nothing by itself here (keystoneauth's status_code_retries stay
0), so nothing waits unseen inside a job. The calls of a create and a delete wait out a 429's
Retry-After (nova's overLimit fault carries one, in seconds) up to `max_retry_after` seconds
(300), at most `retry_total` times (5), saying in the job's progress until when; a longer wait,
or a 429 without Retry-After, is a Throttled error, which fails over to the next choice.
"""
import base64
import email.utils
import hashlib
import ipaddress
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from scitq.errors import (AuthError, BadRequest, CapacityError, InstanceNotFound, ProviderError,
                          QuotaExceeded, ScitqError, Throttled, TransientError)
from scitq.providers.base import TAG, carries, Flavor, Instance, InstanceStatus, Provider, Quota, require

log = logging.getLogger(__name__)

S = InstanceStatus
# Nova server status -> scitq's. A host stopped, paused or shelved is no use as a worker (and
# OVH still bills most of them), so it counts as failed: the reconciler replaces it.
STATUS = {
    "BUILD": S.CREATING, "REBUILD": S.CREATING,
    "ACTIVE": S.RUNNING, "REBOOT": S.RUNNING, "HARD_REBOOT": S.RUNNING, "PASSWORD": S.RUNNING,
    "MIGRATING": S.RUNNING, "RESIZE": S.RUNNING, "VERIFY_RESIZE": S.RUNNING, "REVERT_RESIZE": S.RUNNING,
    "DELETED": S.DELETED, "SOFT_DELETED": S.DELETED,
    "ERROR": S.FAILED, "SHUTOFF": S.FAILED, "SUSPENDED": S.FAILED, "PAUSED": S.FAILED, "RESCUE": S.FAILED,
    "SHELVED": S.FAILED, "SHELVED_OFFLOADED": S.FAILED, "UNKNOWN": S.FAILED,
}
# OVH names GPU flavors <range>-<RAM GB>: (model, RAM of the range's one-GPU size); a flavor
# has as many GPUs as its RAM holds that size (a100-360: 2, rtx5000-84: 3).
GPU_RANGES = {"t1": ("V100", 45), "t1-le": ("V100", 45), "t2": ("V100S", 45), "t2-le": ("V100S", 45),
              "a10": ("A10", 45), "a100": ("A100", 180), "l4": ("L4", 90), "l40s": ("L40S", 90),
              "h100": ("H100", 380), "rtx5000": ("RTX5000", 28)}
# Server faults that mean "no room for this flavor here", not "this request is wrong"
CAPACITY_FAULTS = ("no valid host", "novalidhost", "exhausted all hosts",
                   "exceeded maximum number of retries")


class OVHProvider(Provider):
    name = "ovh"

    def __init__(self, config=None):
        super().__init__(config)
        self._lock = threading.RLock()
        self._conns = {}             # region (None: no region) -> openstack.connection.Connection
        self._ovh_api = None
        self._cache = {}             # key -> (fetched at, value): price catalog, OVH flavor rows
        self._flavor_names = {}      # (region, flavor id) -> name, for servers that only carry the id
        self._key_lock = threading.Lock()
        self._key_users = {}         # keypair name -> creates in flight using it (see _drop_keypair)

    # --- connections -----------------------------------------------------------------------

    def _conn(self, region=None):
        """One openstacksdk connection per region, made on first use."""
        with self._lock:
            if region not in self._conns:
                openstack = require("openstack", "ovh")
                opts = {"region_name": region, "app_name": "scitq",
                        "api_timeout": self.config.get("api_timeout", 60)}
                with self._errors("connect"):
                    if self.config.get("auth"):
                        conn = openstack.connect(auth=dict(self.config["auth"]),
                                                 auth_type=self.config.get("auth_type", "password"),
                                                 load_yaml_config=False, load_envvars=False, **opts)
                    else:
                        conn = openstack.connect(cloud=self.config.get("cloud"), **opts)
                self._conns[region] = conn
            return self._conns[region]

    def _ovh(self):
        """(python-ovh client, or None without OVH API credentials; the API's base URL)."""
        ovh = require("ovh", "ovh")
        with self._lock:
            if self._ovh_api is None:
                endpoint = (self.config.get("endpoint") or ovh.config.config.get("default", "endpoint")
                            or "ovh-eu")
                if endpoint.startswith(("http://", "https://")):
                    # an API base URL rather than one of python-ovh's names (a proxy, a test fake)
                    ovh.client.ENDPOINTS.setdefault(endpoint, endpoint.rstrip("/"))
                if endpoint not in ovh.client.ENDPOINTS:
                    raise AuthError(f"ovh: unknown OVH API endpoint {endpoint!r}")
                keys = {k: self.config.get(k) or ovh.config.config.get(endpoint, k)
                        for k in ("application_key", "application_secret", "consumer_key")}
                if any(keys.values()) and not all(keys.values()):
                    missing = ", ".join(k for k, v in keys.items() if not v)
                    raise AuthError(f"ovh: incomplete OVH API credentials (missing {missing})")
                client = None
                if all(keys.values()):
                    with self._errors("OVH API client"):
                        client = ovh.Client(endpoint=endpoint, timeout=self.config.get("api_timeout", 60),
                                            **keys)
                self._ovh_api = (client, ovh.client.ENDPOINTS[endpoint])
            return self._ovh_api

    def _price_catalog(self, subsidiary):
        """GET /order/catalog/public/cloud: public, so it needs no OVH API credentials."""
        client, base_url = self._ovh()
        if client is not None:
            return client.get("/order/catalog/public/cloud", _need_auth=False, ovhSubsidiary=subsidiary)
        requests = require("requests", "ovh")
        answer = requests.get(f"{base_url}/order/catalog/public/cloud", params={"ovhSubsidiary": subsidiary},
                              timeout=self.config.get("api_timeout", 60))
        answer.raise_for_status()
        return answer.json()

    def _cached(self, key, fetch):
        ttl = self.config.get("price_ttl", 3600)
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < ttl:
                return hit[1]
        value = fetch()
        with self._lock:
            self._cache[key] = (time.monotonic(), value)
        return value

    # --- the interface ---------------------------------------------------------------------

    def check(self):
        require("ovh", "ovh")
        self.regions()

    def regions(self):
        """Config "regions", else the regions of the compute endpoints in the Keystone catalog."""
        if self.config.get("regions"):
            return list(self.config["regions"])
        conn = self._conn(None)
        with self._errors("list regions"):
            catalog = conn.session.auth.get_access(conn.session).service_catalog
            data = catalog.get_endpoints_data(service_type="compute",
                                              interface=self.config.get("interface", "public"))
        return sorted({e.region_name for e in data.get("compute", []) if e.region_name})

    def flavors(self, region=None):
        """Nova's flavors (Windows ones left out), priced from the OVH API (None: no price)."""
        if region is None:
            return [f for r in self.regions() for f in self.flavors(r)]
        with self._errors(f"list flavors in {region}"):
            nova = [f for f in self._conn(region).compute.flavors(details=True) if not f.is_disabled]
        price_of = self._pricing(region)
        flavors = []
        for f in nova:
            price, os_type, available = price_of(f)
            if os_type == "windows" or not available:      # out of stock: renting it would fail
                continue
            gpu, gpu_model = _gpu(f)
            flavors.append(Flavor(provider=self.name, region=region, name=f.name, cpu=f.vcpus,
                                  ram=round(f.ram / 1024, 3), disk=float(f.disk), gpu=gpu,
                                  gpu_model=gpu_model, hourly_cost=price))
            with self._lock:
                self._flavor_names[(region, f.id)] = f.name
        return flavors

    def quotas(self, region):
        """Nova's absolute limits (GET /limits): the numbers Nova itself enforces at create."""
        with self._errors(f"read limits in {region}"):
            limits = self._conn(region).compute.get_limits().absolute

        def quota(resource, used, limit, scale=1):
            limit = None if limit is None or limit < 0 else limit / scale
            return Quota(region=region, resource=resource, used=(used or 0) / scale, limit=limit)

        return [quota("instances", limits.instances_used, limits.instances),
                quota("cores", limits.total_cores_used, limits.total_cores),
                quota("ram_gib", limits.total_ram_used, limits.total_ram, 1024)]

    def create(self, spec):
        """Boot a server and wait until it is ACTIVE with an address. A failure deletes what this
        attempt made (the server, a keypair it created) and raises a typed error."""
        if spec.spot:
            raise BadRequest("ovh: OVH Public Cloud has no spot instances")
        region = spec.region
        conn = self._conn(region)
        public_key = spec.ssh_public_key or self.config.get("ssh_public_key")
        key_name = _keypair_name(public_key) if public_key else None
        server_id, made_key = None, False
        if key_name:
            with self._key_lock:
                self._key_users[key_name] = self._key_users.get(key_name, 0) + 1
        try:
            with self._errors(f"create {spec.name} ({spec.flavor} in {region})"):
                flavor = self._find_flavor(conn, region, spec.flavor)
                if not self._in_stock(region, flavor):
                    raise CapacityError(f"ovh: {spec.flavor} is out of stock in {region}")
                image = self._find_image(conn, spec.image or self.config.get("image", "Debian 12"))
                if key_name:
                    made_key = self._call(self._ensure_keypair, conn, key_name, public_key)
                attrs = {"name": spec.name, "flavor_id": flavor.id, "image_id": image.id,
                         "networks": self._networks(conn),
                         "metadata": {**{str(k): str(v) for k, v in spec.tags.items()}, TAG: spec.name}}
                if key_name:
                    attrs["key_name"] = key_name
                if spec.user_data:
                    attrs["user_data"] = base64.b64encode(spec.user_data.encode()).decode()
                server_id = self._call(conn.compute.create_server, **attrs).id
                log.info("ovh: created server %s (%s) in %s", spec.name, server_id, region)
                server = self._wait_active(conn, server_id, spec.name)
            return self._instance(region, server)
        except BaseException as exc:
            left = self._undo(conn, region, server_id, key_name if made_key else None)
            if left and isinstance(exc, ProviderError):
                exc.leftovers = left
            raise
        finally:
            if key_name:
                with self._key_lock:
                    self._key_users[key_name] -= 1

    def get(self, instance_id):
        region, server_id = self._locate(instance_id)
        with self._errors(f"get {instance_id}", not_found=instance_id):
            server = self._conn(region).compute.get_server(server_id)
        return self._instance(region, server)

    def list(self, tags=None):
        """Servers whose metadata carries every given tag (a None value: the key is present),
        over every region; default: all scitq-tagged ones."""
        regions = self.regions()

        def servers_in(region):
            with self._errors(f"list servers in {region}"):
                return [(region, s) for s in self._conn(region).compute.servers(details=True)]

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(regions)))) as pool:
            found = [pair for batch in pool.map(servers_in, regions) for pair in batch]
        return [self._instance(region, s) for region, s in found
                if s.status not in ("DELETED", "SOFT_DELETED") and carries(s.metadata or {}, tags)]

    def delete(self, instance_id):
        """Delete and wait until Nova no longer lists the server; gone already is fine."""
        try:
            region, server_id = self._locate(instance_id)
        except InstanceNotFound:
            return
        with self._errors(f"delete {instance_id}"):
            self._delete_server(self._conn(region), server_id, instance_id)

    def _delete_server(self, conn, server_id, what):
        """Delete and wait until Nova no longer lists the server, asking again (with back-off)
        when a delete left it in ERROR; TransientError after `delete_timeout`."""
        exc_mod = require("openstack.exceptions", "ovh")
        deadline = time.monotonic() + self.config.get("delete_timeout", 120)
        poll = self.config.get("poll_interval", 5)
        again = poll
        self._call(conn.compute.delete_server, server_id, ignore_missing=True)
        while True:
            try:
                server = self._call(conn.compute.get_server, server_id)
            except exc_mod.NotFoundException:
                return
            if server.status in ("DELETED", "SOFT_DELETED"):
                return
            if time.monotonic() > deadline:
                raise TransientError(f"ovh: {what} still {server.status} ({server.task_state}) after delete")
            if server.status == "ERROR" and not server.task_state:     # that delete failed: again
                message = (server.fault or {}).get("message") or "ERROR"
                log.warning("ovh: delete of %s failed (%s); asking again in %g s", what, message, again)
                time.sleep(again)
                again = min(again * 2, 30)
                self._call(conn.compute.delete_server, server_id, ignore_missing=True)
                continue
            time.sleep(poll)

    def _call(self, call, *args, **kwargs):
        """call(*args, **kwargs), a 429's Retry-After waited out (Provider.wait_throttled) at most
        `retry_total` times; a 429 without one raises at once."""
        exc_mod = require("openstack.exceptions", "ovh")
        retries = int(self.config.get("retry_total", 5))
        for attempt in range(retries + 1):
            try:
                return call(*args, **kwargs)
            except exc_mod.HttpException as exc:
                wait = _retry_after(exc.response) if exc.status_code == 429 else None
                if wait is None or attempt == retries:
                    raise
                self.wait_throttled(429, wait, f"{exc.method} {(exc.url or '?').split('?')[0]}")

    # --- create's steps --------------------------------------------------------------------

    def _find_flavor(self, conn, region, name):
        for f in conn.compute.flavors(details=True):
            if f.name == name or f.id == name:
                return f
        raise BadRequest(f"ovh: no flavor {name!r} in {region}")

    def _in_stock(self, region, flavor):
        """False only when OVH's API says the flavor is out of stock (that API unwell: True)."""
        try:
            return self._pricing(region)(flavor)[2]
        except ProviderError as err:
            log.warning("ovh: stock of %s in %s unknown: %s", flavor.name, region, err.message)
            return True

    def _find_image(self, conn, name):
        """The newest active image of that name (OVH keeps older builds under the same name),
        else an image id."""
        images = [i for i in conn.image.images(name=name) if i.status == "active"]
        if images:
            return max(images, key=lambda i: i.created_at or "")
        exc_mod = require("openstack.exceptions", "ovh")
        try:
            return conn.image.get_image(name)
        except exc_mod.NotFoundException:
            raise BadRequest(f"ovh: no image {name!r}") from None

    def _networks(self, conn):
        name = self.config.get("network", "Ext-Net")
        exc_mod = require("openstack.exceptions", "ovh")
        try:
            net = conn.network.find_network(name, ignore_missing=False) if name else None
        except exc_mod.NotFoundException:
            net = None
        if net is None:
            log.warning("ovh: no network %r, letting Nova choose", name)
            return "auto"
        return [{"uuid": net.id}]

    def _ensure_keypair(self, conn, name, public_key):
        """Make the keypair unless it exists; True when this call made it."""
        exc_mod = require("openstack.exceptions", "ovh")
        with self._key_lock:
            try:
                conn.compute.get_keypair(name)
                return False
            except exc_mod.NotFoundException:
                pass
            try:
                conn.compute.create_keypair(name=name, public_key=public_key)
            except exc_mod.ConflictException:       # made meanwhile by another scitq
                return False
            log.info("ovh: created keypair %s", name)
            return True

    def _wait_active(self, conn, server_id, name):
        timeout = self.config.get("create_timeout", 600)
        deadline = time.monotonic() + timeout
        while True:
            server = self._call(conn.compute.get_server, server_id)
            if server.status == "ACTIVE" and (any(_addresses(server, self._network_name()))
                                              or server.access_ipv4):
                return server
            if server.status == "ERROR":
                message = (server.fault or {}).get("message") or "server went to ERROR"
                if any(f in message.lower() for f in CAPACITY_FAULTS):
                    raise CapacityError(f"ovh: no capacity for {name}: {message}")
                if "quota" in message.lower():
                    raise QuotaExceeded(f"ovh: {name}: {message}")
                raise ProviderError(f"ovh: {name} failed: {message}")
            if time.monotonic() > deadline:
                raise TransientError(f"ovh: {name} still {server.status} after {timeout} s")
            time.sleep(self.config.get("poll_interval", 5))

    def _undo(self, conn, region, server_id, key_name):
        """Delete what a failed create made, waiting until it is gone; never mask the create's own
        error. Returns what is still there ("server <region>/<id>"), each logged."""
        left = []
        if server_id:
            try:
                self._delete_server(conn, server_id, f"{region}/{server_id}")
                log.info("ovh: deleted failed server %s in %s", server_id, region)
            except Exception as exc:
                log.warning("ovh: could not delete failed server %s in %s: %s", server_id, region, exc)
                left.append(f"server {region}/{server_id}")
        if key_name:
            self._drop_keypair(conn, key_name)
        return left

    def _drop_keypair(self, conn, name):
        # Another create in flight may be about to boot with this key: leave it to that one.
        with self._key_lock:
            if self._key_users.get(name, 0) > 1:
                return
            try:
                conn.compute.delete_keypair(name, ignore_missing=True)
            except Exception as exc:
                log.warning("ovh: could not delete keypair %s: %s", name, exc)

    # --- reading servers and prices --------------------------------------------------------

    def _network_name(self):
        return self.config.get("network", "Ext-Net")

    def _instance(self, region, server):
        public, private = _addresses(server, self._network_name())
        status = STATUS.get((server.status or "").upper(), S.FAILED)
        if server.task_state == "deleting" and status is not S.DELETED:
            status = S.DELETING
        return Instance(provider=self.name, id=f"{region}/{server.id}", name=server.name, region=region,
                        flavor=self._server_flavor(region, server), status=status,
                        ip=public or server.access_ipv4 or private, private_ip=private,
                        user=self.config.get("user", "debian"), tags=dict(server.metadata or {}),
                        created_at=server.created_at)

    def _server_flavor(self, region, server):
        """From microversion 2.47 a server embeds its flavor's name; before, only its id."""
        flavor = server.flavor
        if flavor is None:
            return None
        if flavor.original_name or flavor.name:
            return flavor.original_name or flavor.name
        with self._lock:
            known = self._flavor_names.get((region, flavor.id))
        if known is None:
            with self._errors(f"get flavor {flavor.id}"):
                known = self._conn(region).compute.get_flavor(flavor.id).name
            with self._lock:
                self._flavor_names[(region, flavor.id)] = known
        return known

    def _locate(self, instance_id):
        """(region, server id) of an instance id; a bare Nova id is looked for in every region."""
        if "/" in instance_id:
            region, server_id = instance_id.split("/", 1)
            return region, server_id
        exc_mod = require("openstack.exceptions", "ovh")
        for region in self.regions():
            with self._errors(f"look for {instance_id} in {region}"):
                try:
                    self._conn(region).compute.get_server(instance_id)
                    return region, instance_id
                except exc_mod.NotFoundException:
                    continue
        raise InstanceNotFound(f"ovh: no server {instance_id} in any region")

    def _pricing(self, region):
        """A function flavor -> (hourly price or None, osType or None, in stock).

        Two documented OVH API calls, since neither alone prices a flavor:
        GET /cloud/project/{serviceName}/flavor?region=R lists the project's flavors (same ids
        as Nova's) with their `planCodes.hourly` and `osType`; GET /order/catalog/public/cloud
        ?ovhSubsidiary=S (public, no credentials) gives each plan code's `pricings`, the
        consumption one in 1e-8 of the currency per hour. Without OVH API credentials the hourly
        plan code is taken by OVH's convention, "<flavor>.consumption"."""
        client, _ = self._ovh()
        subsidiary = self.config.get("subsidiary", "FR")
        with self._errors("read the OVH price catalog"):
            plans = self._cached(("catalog", subsidiary),
                                 lambda: _plan_prices(self._price_catalog(subsidiary)))
        if client is None:
            def by_convention(flavor):
                os_type = "windows" if flavor.name.startswith("win-") else "linux"
                return plans.get(f"{flavor.name}.consumption"), os_type, True     # stock unknown
            return by_convention
        project = self.config.get("project_id") or self._conn(region).current_project_id
        with self._errors(f"list OVH flavors in {region}"):
            rows = self._cached(("flavors", project, region),
                                lambda: client.get(f"/cloud/project/{project}/flavor", region=region))
        by_id = {r.get("id"): r for r in rows}
        by_name = {r.get("name"): r for r in rows}

        def from_api(flavor):
            row = by_id.get(flavor.id) or by_name.get(flavor.name)
            if row is None:
                return None, "windows" if flavor.name.startswith("win-") else None, True
            return (plans.get((row.get("planCodes") or {}).get("hourly")), row.get("osType"),
                    row.get("available", True) is not False)
        return from_api

    # --- errors ----------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing, not_found=None):
        """Turn SDK exceptions into scitq's typed provider errors."""
        try:
            yield
        except ScitqError:
            raise
        except Exception as exc:
            raise _translate(exc, doing, not_found) from exc


def _translate(exc, doing, not_found=None):
    os_exc = sys.modules.get("openstack.exceptions")
    ks_exc = sys.modules.get("keystoneauth1.exceptions")
    ovh_exc = sys.modules.get("ovh.exceptions")
    req_exc = sys.modules.get("requests.exceptions")
    message = f"ovh: {doing}: {exc}"
    if ovh_exc and isinstance(exc, ovh_exc.APIError):
        error, status = _ovh_api_error(exc, ovh_exc, message)
        if error is not None:
            return error
    elif os_exc and isinstance(exc, os_exc.HttpException):
        status = exc.status_code
    elif ks_exc and isinstance(exc, ks_exc.HttpError):
        status = exc.http_status
    elif req_exc and isinstance(exc, req_exc.HTTPError) and exc.response is not None:
        status = exc.response.status_code
    else:
        return _not_http(exc, message, os_exc, ks_exc, req_exc)
    return _by_status(status, message, "quota" in str(exc).lower(), not_found)


def _ovh_api_error(exc, ovh_exc, message):
    """(scitq error, None) for the OVH API's own kinds of error, else (None, its HTTP status)."""
    code = ""
    response = getattr(exc, "response", None)
    try:
        code = response.json().get("errorCode", "") if response is not None else ""
    except ValueError:
        pass
    if isinstance(exc, (ovh_exc.InvalidKey, ovh_exc.InvalidCredential, ovh_exc.NotCredential,
                        ovh_exc.NotGrantedCall, ovh_exc.Forbidden, ovh_exc.InvalidConfiguration,
                        ovh_exc.InvalidRegion)) or code == "INVALID_SIGNATURE":
        return AuthError(message), None
    if isinstance(exc, (ovh_exc.HTTPError, ovh_exc.NetworkError)):
        return TransientError(message), None
    return None, getattr(response, "status_code", None)


def _not_http(exc, message, os_exc, ks_exc, req_exc):
    """The scitq error for an SDK error that carries no HTTP status."""
    if ks_exc and isinstance(exc, (ks_exc.AuthPluginException, ks_exc.AuthorizationFailure)) or \
            os_exc and isinstance(exc, os_exc.ConfigException):
        return AuthError(message)
    if ks_exc and isinstance(exc, (ks_exc.ConnectionError, ks_exc.RetriableConnectionFailure)) or \
            os_exc and isinstance(exc, os_exc.ResourceTimeout) or \
            req_exc and isinstance(exc, (req_exc.Timeout, req_exc.ConnectionError)) or \
            isinstance(exc, (TimeoutError, ConnectionError)):
        return TransientError(message)
    return _by_status(None, message, "quota" in str(exc).lower())


def _by_status(status, message, about_quota, not_found=None):
    """The scitq error for an HTTP error status of the OpenStack or OVH APIs."""
    if status == 401:
        return AuthError(message)
    if status in (403, 413) and about_quota:
        return QuotaExceeded(message)
    if status == 403:
        return AuthError(message)
    if status == 404 and not_found:
        return InstanceNotFound(f"ovh: no server {not_found}")
    if status == 429:
        return Throttled(message)
    if status is not None and (status == 408 or status >= 500):
        return TransientError(message)
    return ProviderError(message)


# --- pure helpers ------------------------------------------------------------------------------

def _keypair_name(public_key):
    """A name from the key's MD5 fingerprint (Nova's own), so one key makes one keypair."""
    try:
        blob = base64.b64decode(public_key.split()[1])
    except (IndexError, ValueError):
        raise BadRequest("ovh: ssh_public_key is not an OpenSSH public key") from None
    return "scitq-" + hashlib.md5(blob).hexdigest()


def _retry_after(response):
    """A response's Retry-After in seconds (RFC 9110: seconds or an HTTP date), else None."""
    value = (response.headers.get("Retry-After") or "").strip() if response is not None else ""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _plan_prices(catalog):
    """plan code -> hourly price, from the public order catalog's addons."""
    prices = {}
    for addon in catalog.get("addons") or []:
        consumption = [p for p in addon.get("pricings") or [] if "consumption" in (p.get("capacities") or [])]
        hourly = [p for p in consumption if p.get("intervalUnit") == "hour"] or consumption
        if hourly and addon.get("planCode"):
            prices[addon["planCode"]] = hourly[0]["price"] / 1e8
    return prices


def _gpu(flavor):
    """(count, model) from the flavor's pci_passthrough:alias extra spec, else OVH's names."""
    alias = (flavor.extra_specs or {}).get("pci_passthrough:alias")
    if alias:
        model, _, count = alias.partition(":")
        return (int(count) if count.isdigit() else 1), model
    prefix, _, size = flavor.name.rpartition("-")
    if prefix in GPU_RANGES and size.isdigit():
        model, smallest = GPU_RANGES[prefix]
        return max(1, int(size) // smallest), model
    return 0, None


def _addresses(server, network):
    """(public IPv4, private IPv4): the public one on `network` (Ext-Net), a floating one, or
    any global address; the private one from any other network."""
    public = private = None
    for net, addrs in sorted((server.addresses or {}).items(), key=lambda item: item[0] != network):
        for addr in addrs:
            if addr.get("version") != 4:
                continue
            try:
                ip = ipaddress.ip_address(addr.get("addr"))
            except ValueError:
                continue
            if net == network or addr.get("OS-EXT-IPS:type") == "floating" or ip.is_global:
                public = public or str(ip)
            else:
                private = private or str(ip)
    return public, private
