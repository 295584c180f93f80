"""Azure Resource Manager on loopback: enough of Compute, Network and Resources for scitq.

It serves the documented ARM shapes the real SDKs (azure-mgmt-compute, -network, -resource
over azure-core) read, with all state in memory, so `scitq.providers.azure` is tested through
the real client code and nothing leaves 127.0.0.1:

    with FakeAzure() as cloud:
        provider = AzureProvider(cloud.provider_config())
        cloud.fail_next_vm("QuotaExceeded")          # or a stage="async" failure, see below
        cloud.names("networkInterfaces")             # what exists now

Long-running operations, as the REST specs' examples show them: a PUT answers 201 with an
Azure-AsyncOperation header (VirtualMachines_CreateOrUpdate, NetworkInterfaces_CreateOrUpdate),
a DELETE and a disk PATCH 202 with both Azure-AsyncOperation and Location (NetworkInterfaceDelete,
PublicIpAddressDelete, Disks_Update); each operation reports InProgress `polls` times before it
completes (the resource's provisioningState follows), and may fail asynchronously. Like Azure, a
VM PUT makes the OS disk; deleting a VM deletes the NIC and disk it marked deleteOption=Delete
(`honor_delete_options`), and with the NIC the public IP that says deleteOption=Delete; a NIC in
use by a VM (NicInUse), an IP in use by a NIC (PublicIPAddressCannotBeDeleted) and a disk attached
to a VM refuse deletion; a NIC whose VM PUT failed stays reserved for `nic_reservation` seconds
(NicReservedForAnotherVm; Azure's window is 180 s). A VM's PowerState comes with
$expand=instanceView; SKU lists come in pages of `sku_page` (nextLink). Quotas are enforced from
`quota` (cores per region, per family, spot cores). Every call needs the bearer token `token`.
`requests` logs every (method, path, JSON body) for assertions.

Failures to inject: `fail_next` (any method and kind: refused outright, or accepted and failed
asynchronously; any status, code and headers, e.g. 429 with Retry-After; `times` in a row),
`fail_next_vm`, `nic_reservation`, `evict`, `power`.
"""
import itertools
import json
import re
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SUBSCRIPTION = "5c2b8d2e-0f0e-4a59-9d3c-5a1b7e0c3f11"
TOKEN = "fake-arm-token"
REGIONS = ("westeurope", "northeurope")

# name, family, vCPUs, RAM GiB, temp disk GiB, GPUs, spot capable, restricted in (regions),
# Hyper-V generations, CPU architecture. After Azure's B, D, E, NC and Dp ranges.
SKUS = [
    ("Standard_B2s", "standardBSFamily", 2, 4, 8, 0, False, (), "V1,V2", "x64"),
    ("Standard_D2s_v5", "standardDSv5Family", 2, 8, 0, 0, True, (), "V1,V2", "x64"),
    ("Standard_D4s_v5", "standardDSv5Family", 4, 16, 0, 0, True, (), "V1,V2", "x64"),
    ("Standard_D8ds_v5", "standardDDSv5Family", 8, 32, 300, 0, True, (), "V1,V2", "x64"),
    ("Standard_E2s_v5", "standardESv5Family", 2, 16, 0, 0, True, ("westeurope",), "V1,V2", "x64"),
    ("Standard_NC4as_T4_v3", "Standard NCASv3_T4 Family", 4, 28, 176, 1, True, (), "V1,V2", "x64"),
    ("Standard_A2_v2", "standardAv2Family", 2, 4, 20, 0, True, (), "V1", "x64"),
    ("Standard_D2ps_v5", "standardDPSv5Family", 2, 8, 0, 0, True, (), "V2", "Arm64"),
]
# retail prices (USD/hour) in westeurope: (armSkuName, skuName, productName, price)
RETAIL = [
    ("Standard_B2s", "B2s", "Virtual Machines BS Series", 0.0464),
    ("Standard_B2s", "B2s", "Virtual Machines BS Series Windows", 0.0528),
    ("Standard_D2s_v5", "D2s v5", "Virtual Machines Dsv5 Series", 0.096),
    ("Standard_D2s_v5", "D2s v5 Spot", "Virtual Machines Dsv5 Series", 0.0192),
    ("Standard_D2s_v5", "D2s v5 Low Priority", "Virtual Machines Dsv5 Series", 0.0192),
    ("Standard_D4s_v5", "D4s v5", "Virtual Machines Dsv5 Series", 0.192),
    ("Standard_D4s_v5", "D4s v5 Spot", "Virtual Machines Dsv5 Series", 0.0384),
    ("Standard_NC4as_T4_v3", "NC4as T4 v3", "Virtual Machines NCasT4 v3 Series", 0.526),
]
# name, description, source, destination, access, priority, direction (NetworkSecurityGroupGet.json)
DEFAULT_NSG_RULES = [
    ("AllowVnetInBound", "Allow inbound traffic from all VMs in VNET", "VirtualNetwork", "VirtualNetwork", "Allow",
     65000, "Inbound"),
    ("AllowAzureLoadBalancerInBound", "Allow inbound traffic from azure load balancer", "AzureLoadBalancer", "*",
     "Allow", 65001, "Inbound"),
    ("DenyAllInBound", "Deny all inbound traffic", "*", "*", "Deny", 65500, "Inbound"),
    ("AllowVnetOutBound", "Allow outbound traffic from all VMs to all VMs in VNET", "VirtualNetwork",
     "VirtualNetwork", "Allow", 65000, "Outbound"),
    ("AllowInternetOutBound", "Allow outbound traffic from all VMs to Internet", "*", "Internet", "Allow", 65001,
     "Outbound"),
    ("DenyAllOutBound", "Deny all outbound traffic", "*", "*", "Deny", 65500, "Outbound"),
]
DEFAULT_QUOTA = {"cores": 20, "lowPriorityCores": 16, "standardDSv5Family": 12, "virtualMachines": 25000}

# URL type segment (lower case) -> (namespace, type)
KINDS = {t.lower(): (ns, t) for ns, t in [
    ("Microsoft.Compute", "virtualMachines"), ("Microsoft.Compute", "disks"),
    ("Microsoft.Network", "networkInterfaces"), ("Microsoft.Network", "publicIPAddresses"),
    ("Microsoft.Network", "networkSecurityGroups"), ("Microsoft.Network", "virtualNetworks")]}


def _now():
    return datetime.now(timezone.utc).isoformat()


def _name_of(resource_id):
    return resource_id.rstrip("/").rsplit("/", 1)[-1] if resource_id else None


class Reply(Exception):
    """An answer, raised from anywhere in a handler."""

    def __init__(self, status, body=None, headers=None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def error(status, code, message):
    return Reply(status, {"error": {"code": code, "message": message}})


class FakeAzure:
    def __init__(self, subscription=SUBSCRIPTION, token=TOKEN, skus=SKUS, retail=RETAIL, quota=None, polls=1,
                 nic_reservation=0.0, sku_page=4):
        self.subscription = subscription
        self.token = token
        self.skus = list(skus)
        self.retail = list(retail)
        self.quota = dict(DEFAULT_QUOTA if quota is None else quota)
        self.polls = polls                      # InProgress answers before an operation completes
        self.honor_delete_options = True
        self.nic_reservation = nic_reservation  # seconds a NIC is held after its VM PUT failed
        self.sku_page = sku_page                # SKUs per page of the resource SKU list
        self.reserved = {}                      # NIC name -> (until, VM id)
        self.groups = {}                        # name -> resource group
        self.store = {t: {} for _, t in KINDS.values()}
        self.operations = {}
        self.requests = []
        self._failures = []                     # injected: see fail_next / fail_next_vm
        self._ips = itertools.count(10)
        self._lock = threading.RLock()
        self._server = None

    # --- for tests -------------------------------------------------------------------------------

    def start(self):
        fake = self

        class Handler(_Handler):
            cloud = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
                         name="fake-azure").start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def prices_url(self):
        return f"{self.url}/api/retail/prices"

    def credential(self):
        """A token credential handing out this fake's token."""
        from azure.core.credentials import AccessToken
        token = self.token

        class StaticToken:
            def get_token(self, *scopes, **kwargs):
                return AccessToken(token, int(time.time()) + 3600)

        return StaticToken()

    def provider_config(self, **extra):
        return {"subscription_id": self.subscription, "resource_group": "scitq-test",
                "regions": list(REGIONS), "credential": self.credential(), "base_url": self.url,
                "allow_http": True, "polling_interval": 0.01, "retry_total": 3, "retry_backoff": 0.01,
                "teardown_backoff": 0.05, "timeout": 30,
                **extra}

    def names(self, kind):
        """Names of the resources of a kind ("virtualMachines", "disks", ...) that exist now."""
        with self._lock:
            return sorted(self.store[kind])

    def resource(self, kind, name):
        with self._lock:
            return json.loads(json.dumps(self.store[kind][name]))

    def everything(self):
        """{kind: names} of every instance-level resource: VMs, disks, NICs and public IPs."""
        return {k: self.names(k) for k in ("virtualMachines", "disks", "networkInterfaces", "publicIPAddresses")}

    def bodies(self, method, kind):
        """JSON bodies sent with `method` to resources of `kind`, in order."""
        return [b for m, p, b in self.requests if m == method and f"/{kind.lower()}/" in p.lower()]

    def fail_next(self, method, kind, status, code, message=None, stage="request", headers=None, times=1):
        """The next `times` `method` calls on a resource of `kind` answer an error. stage "request":
        refused outright, nothing made (`headers` sent too, e.g. {"Retry-After": "2"} with a 429);
        stage "async" (PUT and DELETE): accepted, then the operation fails; a PUT's resource stays
        with provisioningState Failed (a VM keeps its OS disk), a DELETE's stays as it was."""
        with self._lock:
            for _ in range(times):
                self._failures.append({"method": method, "kind": kind.lower(), "status": status,
                                       "code": code, "message": message or f"{code} (injected)",
                                       "stage": stage, "headers": dict(headers or {})})

    def pending_failures(self):
        with self._lock:
            return len(self._failures)

    def throttle_next(self, method, kind, retry_after, times=1):
        """ARM throttling: 429 TooManyRequests with Retry-After (seconds)."""
        self.fail_next(method, kind, 429, "TooManyRequests",
                       "The request is being throttled as the limit has been reached for operation type "
                       "- Write_30Min. For more information, see - https://aka.ms/throttling",
                       headers={"Retry-After": str(retry_after)}, times=times)

    def power(self, vm_name, state):
        """The VM's PowerState in its instance view: running, stopped, deallocated, ..."""
        with self._lock:
            self.store["virtualMachines"][vm_name]["_power"] = state

    def fail_next_vm(self, code, message=None, status=409, stage="request"):
        """The next VM creation fails: the provider has made its IP and NIC by then."""
        if message is None and code == "OperationNotAllowed":
            message = ("Operation could not be completed as it results in exceeding approved "
                       "standardDSv5Family Cores quota. Additional details - Deployment Model: "
                       "Resource Manager, Location: westeurope, Current Limit: 12, Current Usage: 12, "
                       "Additional Required: 2, (Minimum) New Limit Required: 14.")
        self.fail_next("PUT", "virtualMachines", status, code, message, stage)

    def evict(self, vm_name):
        """A spot eviction with policy Delete: Azure deletes the VM (and what it marked Delete)."""
        with self._lock:
            self._remove_vm(vm_name)

    # --- the ARM API -----------------------------------------------------------------------------

    def handle(self, method, path, query, headers, body):
        self.requests.append((method, path, body))
        segs = [s for s in path.split("/") if s]
        low = [s.lower() for s in segs]
        if low[:3] == ["api", "retail", "prices"]:
            return self._retail(query)                           # a public API: no token
        if headers.get("Authorization") != f"Bearer {self.token}":
            raise error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if low[:2] == ["fake", "operations"]:
            return self._poll(segs[2], query)
        if len(segs) < 2 or low[0] != "subscriptions" or segs[1] != self.subscription:
            raise error(404, "SubscriptionNotFound", f"The subscription '{segs[1:2]}' could not be found.")
        rest, srest = low[2:], segs[2:]
        with self._lock:
            if rest == ["providers", "microsoft.compute", "skus"]:
                return 200, self._sku_page(query), {}
            if len(rest) == 5 and rest[:3] == ["providers", "microsoft.compute", "locations"] and rest[4] == "usages":
                return 200, {"value": self._usages(srest[3])}, {}
            if len(rest) >= 2 and rest[0] == "resourcegroups":
                group = srest[1]
                if len(rest) == 2:
                    return self._group(method, group, body)
                if group not in self.groups:
                    raise error(404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found.")
                if len(rest) >= 5 and rest[2] == "providers" and rest[4] in KINDS:
                    kind = KINDS[rest[4]][1]
                    if len(rest) == 5 and method == "GET":
                        return 200, {"value": [self._shown(kind, r, query) for r in self.store[kind].values()
                                               if r["_group"] == group]}, {}
                    if len(rest) == 6:
                        return self._resource(method, group, kind, srest[5], body, query)
                    if len(rest) == 8 and kind == "virtualNetworks" and rest[6] == "subnets":
                        return self._subnet(method, group, srest[5], srest[7], body)
        raise error(404, "NotFound", f"no route for {method} {path}")

    def _id(self, group, kind, name):
        ns = next(n for n, t in KINDS.values() if t == kind)
        return f"/subscriptions/{self.subscription}/resourceGroups/{group}/providers/{ns}/{kind}/{name}"

    def _lookup(self, resource_id, kind):
        """The resource an id names, or a 400 like ARM's InvalidResourceReference."""
        name = _name_of(resource_id)
        if not resource_id or f"/{kind.lower()}/" not in resource_id.lower() or name not in self.store[kind]:
            raise error(400, "InvalidResourceReference",
                        f"Resource {resource_id} referenced by resource was not found.")
        return self.store[kind][name]

    def _group(self, method, name, body):
        if method == "HEAD":
            return (204 if name in self.groups else 404), None, {}
        if method == "GET":
            if name not in self.groups:
                raise error(404, "ResourceGroupNotFound", f"Resource group '{name}' could not be found.")
            return 200, self.groups[name], {}
        if method == "PUT":
            existed = name in self.groups
            self.groups[name] = {"id": f"/subscriptions/{self.subscription}/resourceGroups/{name}", "name": name,
                                 "type": "Microsoft.Resources/resourceGroups", "location": body["location"],
                                 "tags": body.get("tags") or {}, "properties": {"provisioningState": "Succeeded"}}
            return (200 if existed else 201), self.groups[name], {}
        raise error(405, "MethodNotAllowed", method)

    def _injected(self, method, kind):
        for i, f in enumerate(self._failures):
            if f["method"] == method and f["kind"] == kind.lower():
                return self._failures.pop(i)
        return None

    def _shown(self, kind, resource, query):
        """A resource as GET shows it: a VM's instance view only when asked ($expand=instanceView)."""
        if kind != "virtualMachines" or query.get("$expand") != "instanceView":
            return resource
        shown = json.loads(json.dumps(resource))
        state = str(resource["properties"].get("provisioningState", "Succeeded")).lower()
        statuses = [{"code": f"ProvisioningState/{state}", "level": "Info",
                     "displayStatus": f"Provisioning {state}"}]
        if state == "succeeded":
            power = resource.get("_power", "running")
            statuses.append({"code": f"PowerState/{power}", "level": "Info", "displayStatus": f"VM {power}"})
        shown["properties"]["instanceView"] = {"computerName": resource["name"], "statuses": statuses}
        return shown

    def _resource(self, method, group, kind, name, body, query=None):
        existing = self.store[kind].get(name)
        failure = self._injected(method, kind)
        if failure and failure["stage"] == "request":
            if method == "PUT" and kind == "virtualMachines":
                self._reserve(body, self._id(group, "virtualMachines", name))
            raise Reply(failure["status"], {"error": {"code": failure["code"], "message": failure["message"]}},
                        failure["headers"])
        if method == "GET":
            if not existing:
                raise error(404, "ResourceNotFound",
                            f"The Resource '{KINDS[kind.lower()][0]}/{kind}/{name}' under resource group "
                            f"'{group}' was not found.")
            return 200, self._shown(kind, existing, query or {}), {}
        if method == "PATCH":
            return self._patch(kind, name, existing, body)
        if method == "DELETE":
            return self._delete(kind, name, existing, failure)
        if method == "PUT":
            try:
                resource = getattr(self, "_put_" + kind)(group, name, body, existing)
            except Reply:
                if kind == "virtualMachines":
                    self._reserve(body, self._id(group, "virtualMachines", name))
                raise
            resource.update(id=self._id(group, kind, name), name=name, type=f"{KINDS[kind.lower()][0]}/{kind}",
                            location=body.get("location"), tags=body.get("tags") or {}, _group=group)
            resource["properties"]["provisioningState"] = "Updating" if existing else "Creating"
            self.store[kind][name] = resource
            fail = failure and {"code": failure["code"], "message": failure["message"]}
            if fail and kind == "virtualMachines":
                self._reserve(body, self._id(group, "virtualMachines", name))
            op = self._operation(lambda: self._provisioned(kind, name, fail))
            return (200 if existing else 201), resource, {"Azure-AsyncOperation": op}
        raise error(405, "MethodNotAllowed", method)

    def _patch(self, kind, name, existing, body):
        """Tags; a disk's update is a long-running operation (Disk_Update_ChangeTier.json: 202)."""
        if not existing:
            raise error(404, "ResourceNotFound", f"{kind}/{name} was not found.")
        tags = body.get("tags")
        if kind != "disks":
            if tags is not None:
                existing["tags"] = tags
            return 200, existing, {}

        def updated():
            existing.update(tags=tags if tags is not None else existing["tags"])
            existing["properties"]["provisioningState"] = "Succeeded"
        op = self._operation(updated, result=lambda: self.store["disks"].get(name))
        existing["properties"]["provisioningState"] = "Updating"
        return 202, existing, {"Azure-AsyncOperation": op, "Location": op + "?final=1"}

    def _delete(self, kind, name, existing, failure):
        """202 with both operation headers; an injected async failure leaves the resource as it was."""
        if not existing:
            return 204, None, {}
        self._check_deletable(kind, existing)
        before = existing["properties"].get("provisioningState")
        existing["properties"]["provisioningState"] = "Deleting"
        if failure:
            fail = {"code": failure["code"], "message": failure["message"]}
            op = self._operation(lambda: existing["properties"].update(provisioningState=before) or fail)
        else:
            op = self._operation(lambda: self._deleted(kind, name))
        return 202, None, {"Azure-AsyncOperation": op, "Location": op + "?final=1"}

    def _reserve(self, vm_body, vm_id):
        """A failed VM PUT holds its NICs for `nic_reservation` seconds, as Azure does for 180 s."""
        if not self.nic_reservation:
            return
        until = time.monotonic() + self.nic_reservation
        for ref in ((vm_body or {}).get("properties", {}).get("networkProfile") or {}).get("networkInterfaces") or []:
            self.reserved[_name_of(ref.get("id"))] = (until, vm_id)

    def _check_deletable(self, kind, resource):
        props = resource["properties"]
        until, vm_id = self.reserved.get(resource["name"], (0, None))
        if kind == "networkInterfaces" and until > time.monotonic():
            raise error(400, "NicReservedForAnotherVm",
                        f"Nic(s) in request is reserved for another Virtual Machine for 180 seconds. Please "
                        f"provide another nic(s) or retry after 180 seconds. Reserved VM: {vm_id}")
        if kind == "networkInterfaces" and props.get("virtualMachine"):
            raise error(400, "NicInUse", f"Network Interface {resource['id']} is used by existing resource "
                                         f"{props['virtualMachine']['id']}. In order to delete the network "
                                         "interface, it must be dissociated from the resource.")
        if kind == "publicIPAddresses" and props.get("ipConfiguration"):
            raise error(400, "PublicIPAddressCannotBeDeleted",
                        f"Public IP address {resource['id']} can not be deleted since it is still "
                        f"allocated to resource {props['ipConfiguration']['id']}. In order to delete the "
                        "public IP, disassociate/detach the Public IP address from the resource.  To learn "
                        "how to do this, see aka.ms/deletepublicip.")
        if kind == "disks" and resource.get("managedBy"):
            raise error(409, "OperationNotAllowed",
                        f"Disk {resource['name']} is attached to VM {resource['managedBy']}.")

    # resource bodies: what ARM adds to what was sent

    def _put_publicIPAddresses(self, group, name, body, existing):
        res = json.loads(json.dumps(body))
        props = res.setdefault("properties", {})
        props["ipAddress"] = (existing or {}).get("properties", {}).get("ipAddress") or f"20.61.{next(self._ips)}.4"
        props["ipConfiguration"] = (existing or {}).get("properties", {}).get("ipConfiguration")
        return res

    def _put_networkInterfaces(self, group, name, body, existing):
        res = json.loads(json.dumps(body))
        nic_id = self._id(group, "networkInterfaces", name)
        for i, config in enumerate(res["properties"].get("ipConfigurations") or []):
            cprops = config.setdefault("properties", {})
            self._lookup_subnet(cprops.get("subnet", {}).get("id"))
            config["id"] = f"{nic_id}/ipConfigurations/{config['name']}"
            cprops["privateIPAddress"] = f"10.42.0.{next(self._ips)}"
            if cprops.get("publicIPAddress"):
                ip = self._lookup(cprops["publicIPAddress"]["id"], "publicIPAddresses")
                owner = ip["properties"].get("ipConfiguration")
                if owner and not owner["id"].startswith(nic_id + "/"):
                    raise error(400, "PublicIPAddressInUse", f"{ip['id']} is in use by {owner['id']}")
                ip["properties"]["ipConfiguration"] = {"id": config["id"]}
                option = (cprops["publicIPAddress"].get("properties") or {}).get("deleteOption")
                if option:
                    ip["properties"]["deleteOption"] = option
        res["properties"]["virtualMachine"] = (existing or {}).get("properties", {}).get("virtualMachine")
        return res

    def _put_networkSecurityGroups(self, group, name, body, existing):
        """Each rule gets its id and provisioningState; Azure adds its six default rules
        (NetworkSecurityGroupGet.json)."""
        res = json.loads(json.dumps(body))
        nsg_id = self._id(group, "networkSecurityGroups", name)
        props = res.setdefault("properties", {})
        for rule in props.setdefault("securityRules", []):
            rule["id"] = f"{nsg_id}/securityRules/{rule['name']}"
            rule.setdefault("properties", {})["provisioningState"] = "Succeeded"
        props["defaultSecurityRules"] = [
            {"name": rule, "id": f"{nsg_id}/defaultSecurityRules/{rule}", "properties": {
                "provisioningState": "Succeeded", "description": description, "protocol": "*",
                "sourcePortRange": "*", "destinationPortRange": "*", "sourceAddressPrefix": source,
                "destinationAddressPrefix": target, "access": access, "priority": priority, "direction": direction}}
            for rule, description, source, target, access, priority, direction in DEFAULT_NSG_RULES]
        return res

    def _put_virtualNetworks(self, group, name, body, existing):
        res = json.loads(json.dumps(body))
        vnet_id = self._id(group, "virtualNetworks", name)
        for subnet in res["properties"].get("subnets") or []:
            subnet["id"] = f"{vnet_id}/subnets/{subnet['name']}"
            subnet["properties"]["provisioningState"] = "Succeeded"
        return res

    def _put_disks(self, group, name, body, existing):
        return json.loads(json.dumps(body))

    def _put_virtualMachines(self, group, name, body, existing):
        res = json.loads(json.dumps(body))
        props = res["properties"]
        vm_id = self._id(group, "virtualMachines", name)
        region = body.get("location")
        size = props["hardwareProfile"]["vmSize"]
        sku = next((s for s in self.skus if s[0].lower() == size.lower()), None)
        if sku is None or region not in REGIONS:
            raise error(400, "InvalidParameter", f"The requested VM size {size} is not valid in {region}.")
        if region in sku[7]:
            raise error(409, "SkuNotAvailable",
                        f"The requested VM size for resource 'Following SKUs have failed for Capacity "
                        f"Restrictions: {size}' is currently not available in location '{region}'. "
                        "Please try another size or deploy to a different location or different zone.")
        if props.get("priority") == "Spot":
            self._check_max_price(size, (props.get("billingProfile") or {}).get("maxPrice", -1))
        if not existing:
            self._check_quota(region, sku, props.get("priority") == "Spot")
        nics = [self._lookup(n["id"], "networkInterfaces") for n in props["networkProfile"]["networkInterfaces"]]
        for nic in nics:
            owner = nic["properties"].get("virtualMachine")
            if owner and owner["id"] != vm_id:
                raise error(409, "NicInUse", f"{nic['id']} is in use by {owner['id']}")
        os_disk = props["storageProfile"].setdefault("osDisk", {})
        disk_name = os_disk.setdefault("name", f"{name}_OsDisk_1_{uuid.uuid4().hex}")
        if not existing:
            self.store["disks"][disk_name] = {
                "id": self._id(group, "disks", disk_name), "name": disk_name, "type": "Microsoft.Compute/disks",
                "location": region, "tags": {}, "managedBy": vm_id, "_group": group,
                "sku": {"name": (os_disk.get("managedDisk") or {}).get("storageAccountType", "Standard_LRS")},
                "properties": {"diskSizeGB": os_disk.get("diskSizeGB", 30), "diskState": "Attached",
                               "osType": "Linux", "provisioningState": "Succeeded", "timeCreated": _now(),
                               "creationData": {"createOption": "FromImage"}, "uniqueId": str(uuid.uuid4())}}
        os_disk["managedDisk"] = dict(os_disk.get("managedDisk") or {}, id=self._id(group, "disks", disk_name))
        for nic in nics:
            nic["properties"]["virtualMachine"] = {"id": vm_id}
        props["osProfile"].pop("customData", None)               # ARM never returns it
        props["vmId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, vm_id))
        props["timeCreated"] = (existing or {}).get("properties", {}).get("timeCreated") or _now()
        return res

    def _check_max_price(self, size, max_price):
        """Azure's spot price rules (the spot error codes of the Azure docs)."""
        if max_price != -1 and not (isinstance(max_price, (int, float)) and max_price > 0):
            raise error(400, "MaxPriceValueInvalid",
                        "Invalid max price value. The only supported values for max price are -1 or a decimal "
                        "greater than zero. Max price value of -1 indicates the Virtual Machine won't be "
                        "evicted for price reasons.")
        spot = [price for sku, name, _, price in self.retail if sku == size and "Spot" in name]
        if max_price != -1 and spot and max_price < min(spot):
            raise error(409, "VariablePriceGreaterThanProvidedMaxPrice",
                        f"Cannot create this Virtual Machine since the provided max price is lower than the "
                        f"current variable price {min(spot)} for spot VM size {size}.")

    def _check_quota(self, region, sku, spot):
        family, cpu = sku[1], sku[2]
        used = {"cores": 0, "lowPriorityCores": 0, family: 0}
        for vm in self.store["virtualMachines"].values():
            if vm["location"] != region:
                continue
            other = next(s for s in self.skus if s[0] == vm["properties"]["hardwareProfile"]["vmSize"])
            if vm["properties"].get("priority") == "Spot":
                used["lowPriorityCores"] += other[2]
            else:
                used["cores"] += other[2]
                if other[1] == family:
                    used[family] += other[2]
        wanted = ["lowPriorityCores"] if spot else ["cores", family]
        for key in wanted:
            limit = self.quota.get(key)
            if limit is not None and used[key] + cpu > limit:
                name = ("Low Priority Cores" if spot
                        else f"{family} Cores" if key == family else "Total Regional Cores")
                raise error(409, "OperationNotAllowed",
                            f"Operation could not be completed as it results in exceeding approved {name} "
                            f"quota. Additional details - Location: {region}, Current Limit: {limit}, "
                            f"Current Usage: {used[key]}, Additional Required: {cpu}, "
                            f"(Minimum) New Limit Required: {used[key] + cpu}.")

    def _lookup_subnet(self, subnet_id):
        m = re.search(r"/virtualNetworks/([^/]+)/subnets/([^/]+)$", subnet_id or "", re.I)
        vnet = m and self.store["virtualNetworks"].get(m.group(1))
        subnet = vnet and next((s for s in vnet["properties"].get("subnets") or [] if s["name"] == m.group(2)), None)
        if not subnet:
            raise error(400, "InvalidResourceReference", f"Subnet {subnet_id} was not found.")
        return subnet

    def _subnet(self, method, group, vnet_name, name, body):
        vnet = self.store["virtualNetworks"].get(vnet_name)
        if vnet is None:
            raise error(404, "ResourceNotFound", f"virtualNetworks/{vnet_name} was not found.")
        subnets = vnet["properties"].setdefault("subnets", [])
        found = next((s for s in subnets if s["name"] == name), None)
        if method == "GET":
            if not found:
                raise error(404, "NotFound", f"Resource {vnet['id']}/subnets/{name} not found.")
            return 200, found, {}
        if method == "PUT":
            subnet = {"id": f"{vnet['id']}/subnets/{name}", "name": name,
                      "properties": dict(body.get("properties") or {}, provisioningState="Succeeded")}
            if found:
                subnets.remove(found)
            subnets.append(subnet)
            return (200 if found else 201), subnet, {"Azure-AsyncOperation": self._operation(lambda: None)}
        raise error(405, "MethodNotAllowed", method)

    # long-running operations

    def _operation(self, finish, result=None):
        """An operation's URL. `finish()` runs when it completes (an error dict: it failed);
        `result()` is what its Location URL answers then (None: 204, no content)."""
        op_id = uuid.uuid4().hex
        self.operations[op_id] = {"polls": self.polls, "finish": finish, "done": False, "error": None,
                                  "result": result}
        return f"{self.url}/fake/operations/{op_id}"

    def _poll(self, op_id, query):
        with self._lock:
            op = self.operations.get(op_id)
            if op is None:
                raise error(404, "NotFound", f"no operation {op_id}")
            if "final" in query:                       # the Location URL, once the operation is over
                if not op["done"]:
                    return 202, None, {"Location": f"{self.url}/fake/operations/{op_id}?final=1",
                                       "Retry-After": "0"}
                if op["error"]:
                    raise Reply(400, {"error": op["error"]})
                found = op["result"]() if op["result"] else None
                return (200, found, {}) if found is not None else (204, None, {})
            if op["polls"] > 0:
                op["polls"] -= 1
                return 200, {"status": "InProgress"}, {}
            if not op["done"]:
                op["error"], op["done"] = op["finish"](), True
            if op["error"]:
                return 200, {"status": "Failed", "error": op["error"]}, {}
            return 200, {"status": "Succeeded"}, {}

    def _provisioned(self, kind, name, fail):
        resource = self.store[kind].get(name)
        if resource is not None:
            resource["properties"]["provisioningState"] = "Failed" if fail else "Succeeded"
        return fail

    def _deleted(self, kind, name):
        if kind == "virtualMachines":
            self._remove_vm(name)
            return None
        resource = self.store[kind].pop(name, None)
        if resource and kind == "networkInterfaces":
            for ip_id in _nic_ip_ids(resource):
                ip = self.store["publicIPAddresses"].get(_name_of(ip_id))
                if ip:
                    ip["properties"]["ipConfiguration"] = None
        return None

    def _remove_vm(self, name):
        vm = self.store["virtualMachines"].pop(name, None)
        if vm is None:
            return
        props = vm["properties"]
        for ref in props["networkProfile"]["networkInterfaces"]:
            nic = self.store["networkInterfaces"].get(_name_of(ref["id"]))
            if nic:
                nic["properties"]["virtualMachine"] = None
                if self.honor_delete_options and (ref.get("properties") or {}).get("deleteOption") == "Delete":
                    ips = [self.store["publicIPAddresses"].get(_name_of(i)) for i in _nic_ip_ids(nic)]
                    self._deleted("networkInterfaces", nic["name"])
                    for ip in ips:
                        if ip and ip["properties"].get("deleteOption") == "Delete":
                            self.store["publicIPAddresses"].pop(ip["name"], None)
        os_disk = props["storageProfile"]["osDisk"]
        disk = self.store["disks"].get(os_disk["name"])
        if disk:
            disk["managedBy"] = None
            disk["properties"]["diskState"] = "Unattached"
            if self.honor_delete_options and os_disk.get("deleteOption") == "Delete":
                self.store["disks"].pop(os_disk["name"])

    # catalog

    def _sku_page(self, query):
        """One page of the SKU list; nextLink carries the filter and where the next page starts."""
        skus = self._skus(query.get("$filter", ""))
        start = int(query.get("$skiptoken", "0"))
        page = {"value": skus[start:start + self.sku_page]}
        if start + self.sku_page < len(skus):
            from urllib.parse import urlencode
            page["nextLink"] = (f"{self.url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/skus?"
                                + urlencode({"api-version": query.get("api-version", ""),
                                             "$filter": query.get("$filter", ""),
                                             "$skiptoken": start + self.sku_page}))
        return page

    def _skus(self, flt):
        m = re.search(r"location\s+eq\s+'([^']+)'", flt or "")
        region = m.group(1).lower() if m else None
        out = [{"resourceType": "disks", "name": "Premium_LRS", "tier": "Premium",
                "locations": list(REGIONS), "capabilities": [], "restrictions": []}]
        for name, family, cpu, ram, temp, gpus, spot, restricted, gens, arch in self.skus:
            regions = [r for r in REGIONS if region in (None, r)]
            if not regions:
                continue
            caps = {"vCPUs": cpu, "MemoryGB": ram, "MaxResourceVolumeMB": temp * 1024, "OSVhdSizeMB": 1047552,
                    "LowPriorityCapable": str(spot), "HyperVGenerations": gens, "CpuArchitectureType": arch,
                    "MaxDataDiskCount": 8}
            if gpus:
                caps["GPUs"] = gpus
            restrictions = [{"type": "Location", "values": [r], "reasonCode": "NotAvailableForSubscription",
                             "restrictionInfo": {"locations": [r]}} for r in restricted if r in regions]
            out.append({"resourceType": "virtualMachines", "name": name, "tier": "Standard",
                        "size": name.split("_", 1)[1], "family": family, "locations": regions,
                        "locationInfo": [{"location": r, "zones": ["1", "2", "3"]} for r in regions],
                        "capabilities": [{"name": k, "value": str(v)} for k, v in caps.items()],
                        "restrictions": restrictions})
        return out

    def _usages(self, region):
        used = {"cores": 0, "lowPriorityCores": 0, "virtualMachines": 0}
        for vm in self.store["virtualMachines"].values():
            if vm["location"] != region:
                continue
            sku = next(s for s in self.skus if s[0] == vm["properties"]["hardwareProfile"]["vmSize"])
            used["virtualMachines"] += 1
            if vm["properties"].get("priority") == "Spot":
                used["lowPriorityCores"] += sku[2]
            else:
                used["cores"] += sku[2]
                used[sku[1]] = used.get(sku[1], 0) + sku[2]
        families = {s[1] for s in self.skus}
        names = {"cores": "Total Regional vCPUs", "lowPriorityCores": "Total Regional Low-priority vCPUs",
                 "virtualMachines": "Virtual Machines", "availabilitySets": "Availability Sets"}
        names.update({f: f"{f} vCPUs" for f in families})
        return [{"unit": "Count", "currentValue": used.get(key, 0), "limit": self.quota.get(key, 100),
                 "name": {"value": key, "localizedValue": label}} for key, label in names.items()]

    def _retail(self, query):
        m = re.search(r"armRegionName eq '([^']+)'", query.get("$filter", ""))
        region = m.group(1) if m else None
        items = [{"currencyCode": query.get("currencyCode", "USD"), "retailPrice": price, "unitPrice": price,
                  "armRegionName": "westeurope", "location": "EU West", "armSkuName": sku, "skuName": sku_name,
                  "meterName": sku_name, "productName": product, "serviceName": "Virtual Machines",
                  "unitOfMeasure": "1 Hour", "type": "Consumption", "isPrimaryMeterRegion": True}
                 for sku, sku_name, product, price in self.retail if region in (None, "westeurope")]
        # two pages, so the client must follow NextPageLink
        page = int(query.get("page", "0"))
        half = (len(items) + 1) // 2
        chunk = items[:half] if page == 0 else items[half:]
        nxt = (f"{self.prices_url}?page=1&currencyCode={query.get('currencyCode', 'USD')}"
               f"&$filter={query.get('$filter', '')}") if page == 0 else None
        return 200, {"BillingCurrency": "USD", "Items": chunk, "NextPageLink": nxt, "Count": len(chunk)}, {}


def _nic_ip_ids(nic):
    return [ip_id for config in nic["properties"].get("ipConfigurations") or []
            if (ip_id := (config.get("properties", {}).get("publicIPAddress") or {}).get("id"))]


def _public(value):
    """A resource as ARM shows it: without the fake's own bookkeeping keys."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-azure"
    cloud = None
    disable_nagle_algorithm = True      # headers and body in one segment: no delayed-ACK stalls
    wbufsize = 1 << 16                  # flushed by the server after each request

    def log_message(self, *args):
        pass

    def _serve(self):
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        try:
            status, payload, headers = self.cloud.handle(self.command, unquote(parts.path), query,
                                                         self.headers, body)
        except Reply as reply:
            status, payload, headers = reply.status, reply.body, reply.headers
        with self.cloud._lock:
            data = json.dumps(_public(payload)).encode() if payload is not None else b""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_POST = _serve
