"""`azure`: virtual machines in one resource group of one Azure subscription.

    azure:
      subscription_id: 00000000-0000-0000-0000-000000000000
      resource_group: scitq              # created if missing
      regions: [westeurope, swedencentral]   # or location: westeurope
      image: Debian:debian-12:12-gen2:latest # publisher:offer:sku:version, or an image resource id
      user: scitq                        # the admin user scitq connects as (SSH keys only)
      vnet: scitq-{region}               # virtual network, subnet and security group of a region,
      subnet: scitq                      #   created (and tagged) when missing
      nsg: scitq-{region}
      address_prefix: 10.42.0.0/16
      ssh_source: "*"                    # who may reach port 22 (an address prefix narrows it)
      os_disk_gb: 30                     # OS disk size (default: the image's, 30 GiB for Debian)
      disk_type: StandardSSD_LRS
      prices: {Standard_D2s_v5: 0.096, Standard_D4s_v5: {ondemand: 0.192, spot: 0.04}}
      prices_url: ...                    # the Azure Retail Prices API, asked per region when
      currency: USD                      #   'prices' is not given (default: prices unknown)
      tenant_id / client_id / client_secret  # a service principal; default DefaultAzureCredential

Each VM gets its own public IP `<name>-ip`, NIC `<name>-nic` and OS disk `<name>-osdisk`,
all tagged {scitq: <name>} and created with deleteOption Delete (deleting the VM, or Azure
evicting a spot VM, deletes them too); the instance id is the VM name. A create that fails
midway deletes what it made, so a retry starts clean; delete() removes the VM and then those
three. Deletions Azure refuses for a while (NicReservedForAnotherVm: a NIC is held ~180 s after
a failed VM PUT; NicInUse, PublicIPAddressCannotBeDeleted while the VM or NIC goes) are retried
with back-off for up to `teardown_timeout` seconds (600); what is still there then is raised
(a failed create's error lists it in `leftovers`). list() shows such leftovers too, as a
DELETED instance named after their tag, so the recruiter's sweep deletes them. The OS disk is
tagged by a PATCH after the VM's PUT (retried likewise); should that never succeed, an untagged,
unattached disk `<name>-osdisk` still counts as `<name>`'s for list() and delete().

Spot: `max_price` is in US dollars per hour whatever the billing currency (Azure's rule), -1
to pay up to the on-demand price, or a price above 0; a spot price above it fails over.

Throttling: the SDK retries at most `retry_total` times (5), with exponential back-off from
`retry_backoff` seconds (0.8), and honors a 429's Retry-After only up to `max_retry_after`
seconds (300), saying in the job's progress until when it waits; a longer wait is a Throttled
error, which fails over to the next choice.

For tests: `credential` (any azure-core token credential), `base_url` (the ARM endpoint),
`allow_http` (send the bearer token over plain http: a local fake only), `polling_interval`
(passed to the SDK clients), `timeout` (seconds to wait for one operation), `teardown_backoff`
(first wait between deletion attempts, 2 s).
"""
import base64
import logging
import threading
import time
from contextlib import contextmanager

from scitq.errors import (AuthError, BadRequest, CapacityError, InstanceNotFound, ProviderError,
                          ProviderUnavailable, QuotaExceeded, ScitqError, Throttled, TransientError)
from scitq.providers.base import (TAG, carries, Flavor, Instance, InstanceStatus, Provider, Quota, check_max_price,
                                  require, say)

log = logging.getLogger(__name__)

EXTRA = "azure"
DEFAULT_IMAGE = "Debian:debian-12:12-gen2:latest"
ARM_SCOPE = "https://management.azure.com/.default"
SHARED_TAG = {f"{TAG}-shared": "network"}   # the per-region network, shared by every instance

# provisioningState -> scitq status (a Succeeded VM without its address yet is still CREATING)
STATUS = {
    "creating": InstanceStatus.CREATING,
    "updating": InstanceStatus.CREATING,
    "migrating": InstanceStatus.CREATING,
    "succeeded": InstanceStatus.RUNNING,
    "failed": InstanceStatus.FAILED,
    "canceled": InstanceStatus.FAILED,
    "deleting": InstanceStatus.DELETING,
}

QUOTA_CODES = {"QuotaExceeded", "PublicIPCountLimitReached", "SubscriptionQuotaExceeded"}
CAPACITY_CODES = {"SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
                  "OverconstrainedAllocationRequest", "OverconstrainedZonalAllocationRequest",
                  "SpotVMEvictedForCapacity", "VariablePriceGreaterThanProvidedMaxPrice"}
BAD_REQUEST_CODES = {"MaxPriceValueInvalid", "InvalidParameter"}
# Deletions Azure refuses only for a while: the NIC is still held, or what uses it is still going
TEARDOWN_RETRY_CODES = {"NicReservedForAnotherVm", "NicInUse", "PublicIPAddressCannotBeDeleted",
                        "PublicIPAddressInUse", "OperationNotAllowed", "AnotherOperationInProgress",
                        "RetryableError", "Canceled"}
# the instance view's PowerState: anything but running is no use as a worker (and a stopped VM bills)
POWER_FAILED = {"stopped", "stopping", "deallocated", "deallocating"}
AUTH_CODES = {"AuthorizationFailed", "AuthenticationFailed", "InvalidAuthenticationToken",
              "InvalidAuthenticationTokenTenant", "ExpiredAuthenticationToken",
              "LinkedAuthorizationFailed", "SubscriptionNotFound"}
TRANSIENT_CODES = {"TooManyRequests", "RetryableError", "InternalServerError", "ServerTimeout",
                   "OperationPreempted", "AnotherOperationInProgress"}

# GPU model from the size name: resource SKUs give the count, not the model
GPU_MODELS = [("H100", "H100"), ("A100", "A100"), ("T4", "T4"), ("A10", "A10"), ("MI300", "MI300X"),
              ("NCv3", "V100"), ("NC6s_v3", "V100"), ("NC12s_v3", "V100"), ("NC24s_v3", "V100"),
              ("NDv2", "V100"), ("ND40rs_v2", "V100")]


def error_from(exc, what):
    """The scitq error for an exception of the Azure SDK (None when it is not one)."""
    if isinstance(exc, ProviderError):
        return exc
    if not type(exc).__module__.startswith("azure."):
        return None
    from azure.core import exceptions as az
    if isinstance(exc, az.HttpResponseError):
        error = getattr(exc, "error", None)
        codes = [getattr(error, "code", None)] + [getattr(d, "code", None)
                                                  for d in getattr(error, "details", None) or []]
        codes = [c for c in codes if c]
        message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
        status = exc.status_code
        text = f"azure: {what}: {codes[0] if codes else status or type(exc).__name__}: {message}"
        err = _typed(codes, message, status, isinstance(exc, az.ClientAuthenticationError),
                     isinstance(exc, az.ResourceNotFoundError))(text)
        err.codes = set(codes)
        return err
    if isinstance(exc, az.ServiceRequestError) and "non-TLS" in str(exc):
        return ProviderUnavailable(f"azure: {what}: the ARM endpoint must be https to send credentials ({exc})")
    if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError)):   # no answer, or a timeout
        return TransientError(f"azure: {what}: {exc}")
    return ProviderError(f"azure: {what}: {type(exc).__name__}: {exc}")


def _typed(codes, message, status, auth_failed, not_found):
    """The scitq error class for an ARM error answer."""
    codes = set(codes)
    if codes & QUOTA_CODES or ("OperationNotAllowed" in codes and "quota" in message.lower()):
        return QuotaExceeded
    if codes & CAPACITY_CODES:
        return CapacityError
    if status in (401, 403) or codes & AUTH_CODES or auth_failed:
        return AuthError
    if status == 404 or not_found:
        return InstanceNotFound
    if status == 429:
        return Throttled
    if (status or 0) >= 500 or codes & TRANSIENT_CODES:
        return TransientError
    if codes & BAD_REQUEST_CODES:
        return BadRequest
    return ProviderError


def _retryable(err):
    """A deletion worth trying again: Azure holds the resource for a while, or was unwell."""
    return isinstance(err, TransientError) or bool(getattr(err, "codes", set()) & TEARDOWN_RETRY_CODES)


@contextmanager
def calling(what):
    """Turn the SDK's exceptions into scitq's typed provider errors."""
    try:
        yield
    except Exception as exc:
        err = error_from(exc, what)
        if err is None or err is exc:
            raise
        raise err from exc


def rest(model):
    """An SDK model as its REST JSON (dicts with camelCase keys), whatever the SDK generation."""
    if model is None:
        return {}
    if isinstance(model, dict):
        return model
    if hasattr(model, "as_dict") and hasattr(model, "keys"):      # typespec models: a mapping
        return model.as_dict()
    return model.serialize(keep_readonly=True)                    # msrest models (older SDKs)


def is_not_found(exc):
    return getattr(exc, "status_code", None) == 404 or type(exc).__name__ == "ResourceNotFoundError"


def last_segment(resource_id):
    return resource_id.rstrip("/").rsplit("/", 1)[-1] if resource_id else None


def retail_prices(url, region, currency="USD", timeout=30.0):
    """Hourly Linux prices of a region from the Azure Retail Prices API at `url`:
    {sku name: {"ondemand": price, "spot": price}} (either may be missing)."""
    import httpx
    flt = (f"serviceName eq 'Virtual Machines' and armRegionName eq '{region}' "
           "and priceType eq 'Consumption'")
    prices, params = {}, {"currencyCode": currency, "$filter": flt}
    for _ in range(200):                                     # pages of 100 items; a region has fewer
        answer = httpx.get(url, params=params, timeout=timeout)
        answer.raise_for_status()
        data = answer.json()
        for item in data.get("Items") or []:
            sku, meter = item.get("armSkuName"), item.get("skuName") or item.get("meterName") or ""
            if (not sku or item.get("unitOfMeasure") != "1 Hour" or "Low Priority" in meter
                    or "Windows" in (item.get("productName") or "")):
                continue
            kind = "spot" if "Spot" in meter else "ondemand"
            slot = prices.setdefault(sku, {})
            slot[kind] = min(float(item["retailPrice"]), slot.get(kind, float("inf")))
        url, params = data.get("NextPageLink"), None
        if not url:
            break
    return prices


class AzureProvider(Provider):
    name = "azure"

    def __init__(self, config=None):
        super().__init__(config)
        c = self.config
        self.subscription_id = c.get("subscription_id")
        self.resource_group = c.get("resource_group", "scitq")
        regions = c.get("regions") or c.get("locations") or c.get("location") or []
        self._regions = [regions] if isinstance(regions, str) else list(regions)
        self.user = c.get("user", "scitq")
        self.timeout = float(c.get("timeout", 1800))
        self._clients = {}
        self._networks = {}                  # region -> subnet id, once ensured
        self._group_ready = False
        self._prices = {}                    # region -> (fetched at, table)
        self._lock = threading.RLock()

    # --- the SDK, imported on first use --------------------------------------------------------

    def _credential(self):
        if self.config.get("credential") is not None:
            return self.config["credential"]
        identity = require("azure.identity", EXTRA)
        c = self.config
        if c.get("client_id") and c.get("client_secret") and c.get("tenant_id"):
            return identity.ClientSecretCredential(c["tenant_id"], c["client_id"], c["client_secret"])
        return identity.DefaultAzureCredential()

    def _client(self, kind):
        """The compute, network or resource management client, made once."""
        with self._lock:
            if kind in self._clients:
                return self._clients[kind]
            if not self.subscription_id:
                raise BadRequest("azure: 'subscription_id' is required in its configuration")
            if kind == "compute":
                cls = require("azure.mgmt.compute", EXTRA).ComputeManagementClient
            elif kind == "network":
                cls = require("azure.mgmt.network", EXTRA).NetworkManagementClient
            else:
                try:
                    cls = require("azure.mgmt.resource.resources", EXTRA).ResourceManagementClient
                except ProviderUnavailable:
                    cls = require("azure.mgmt.resource", EXTRA).ResourceManagementClient
            require("azure.mgmt.core", EXTRA)
            credential = self._credential()
            kwargs = {}
            if self.config.get("base_url"):
                kwargs["base_url"] = self.config["base_url"].rstrip("/")
            if self.config.get("polling_interval") is not None:
                kwargs["polling_interval"] = float(self.config["polling_interval"])
            kwargs["retry_policy"] = self._retry_policy()
            if self.config.get("allow_http"):
                kwargs["authentication_policy"] = _plain_http_bearer(
                    credential, self.config.get("credential_scope", ARM_SCOPE))
            self._clients[kind] = cls(credential, self.subscription_id, **kwargs)
            return self._clients[kind]

    def _retry_policy(self):
        """azure-core's retries, bounded: a 429's Retry-After is waited for only up to
        `max_retry_after` seconds (the SDK would wait whatever it says inside a job)."""
        policies = require("azure.core.pipeline.policies", EXTRA)
        provider = self

        class BoundedRetry(policies.RetryPolicy):
            def _sleep_for_retry(self, response, transport):
                wait = self.get_retry_after(response)
                if not wait:
                    return False
                request = f"{response.http_request.method} {response.http_request.url.split('?')[0]}"
                provider.wait_throttled(response.http_response.status_code, wait, request, transport.sleep)
                return True

        c = self.config
        return BoundedRetry(retry_total=int(c.get("retry_total", 5)),
                            retry_backoff_factor=float(c.get("retry_backoff", 0.8)),
                            retry_backoff_max=30, timeout=max(self.max_retry_after() * 2, 600))

    def _wait(self, poller, what):
        """The result of a long-running operation, waited for (at most `timeout`)."""
        with calling(what):
            poller.wait(self.timeout)
            if not poller.done():
                raise TransientError(f"azure: {what}: not done after {self.timeout:.0f} s")
            return rest(poller.result())

    # --- catalog ---------------------------------------------------------------------------------

    def check(self):
        if not self.resource_group:
            raise BadRequest("azure: 'resource_group' is required in its configuration")
        client = self._client("resource")
        try:
            with calling("resource group"):
                client.resource_groups.get(self.resource_group)
        except InstanceNotFound:
            pass                             # made on the first create

    def regions(self):
        return list(self._regions)

    def flavors(self, region=None):
        regions = [region] if region else self.regions()
        return [f for r in regions for f in self._flavors(r)]

    def _flavors(self, region):
        compute = self._client("compute")
        with calling(f"resource SKUs in {region}"):
            skus = [rest(s) for s in compute.resource_skus.list(filter=f"location eq '{region}'")]
        prices = self._price_table(region)
        generation = self.config.get("hyperv_generation", "V2")       # Debian 12 gen2 needs V2
        architecture = self.config.get("architecture", "x64")
        out = []
        for sku in skus:
            caps = self._usable_caps(sku, region, generation, architecture)
            if caps is None:
                continue
            cpu, ram = int(float(caps.get("vCPUs") or 0)), float(caps.get("MemoryGB") or 0)
            name = sku["name"]
            # scratch space: the size's local temp disk when it has one, else the OS disk
            temp_disk = float(caps.get("MaxResourceVolumeMB") or 0) / 1024
            disk = temp_disk or float(self.config.get("os_disk_gb") or 30)
            gpu = int(float(caps.get("GPUs") or 0))
            ondemand, spot = _price(prices, name)
            flavor = dict(provider=self.name, region=region, name=name, cpu=cpu, ram=ram,
                          disk=disk, gpu=gpu, gpu_model=_gpu_model(name) if gpu else None)
            out.append(Flavor(**flavor, hourly_cost=ondemand))
            if str(caps.get("LowPriorityCapable", "False")).lower() == "true":
                out.append(Flavor(**flavor, hourly_cost=spot, spot=True))
        return out

    @staticmethod
    def _usable_caps(sku, region, generation, architecture):
        """The SKU's capabilities when it is a VM size this subscription can rent here, else None."""
        if sku.get("resourceType") != "virtualMachines" or not _offered_in(sku, region):
            return None
        if _restricted(sku, region):                             # not for this subscription
            return None
        caps = {c.get("name"): c.get("value") for c in sku.get("capabilities") or []}
        if int(float(caps.get("vCPUs") or 0)) <= 0 or float(caps.get("MemoryGB") or 0) <= 0:
            return None
        if generation and generation not in (caps.get("HyperVGenerations") or generation).split(","):
            return None
        if (caps.get("CpuArchitectureType") or "x64").lower() != architecture.lower():
            return None
        return caps

    def _price_table(self, region):
        """{sku: price or {"ondemand", "spot"}} from the 'prices' setting, or the retail API."""
        source = self.config.get("prices")
        if source is None and self.config.get("prices_url"):
            url, currency = self.config["prices_url"], self.config.get("currency", "USD")
            source = lambda r: retail_prices(url, r, currency)          # noqa: E731
        if source is None:
            return {}
        if not callable(source):
            return source
        with self._lock:
            fetched = self._prices.get(region)
        if fetched and time.time() - fetched[0] < float(self.config.get("prices_ttl", 86400)):
            return fetched[1]
        try:
            table = source(region) or {}
        except Exception as exc:            # prices are a nicety: the catalog still lists sizes
            log.warning("azure: prices for %s unavailable: %s", region, exc)
            return {}
        with self._lock:
            self._prices[region] = (time.time(), table)
        return table

    def quotas(self, region):
        compute = self._client("compute")
        with calling(f"usages in {region}"):
            usages = [rest(u) for u in compute.usage.list(region)]
        out = []
        for u in usages:
            key = (u.get("name") or {}).get("value") or ""
            resource = {"cores": "cores", "virtualMachines": "instances",
                        "lowPriorityCores": "spot_cores"}.get(key)
            if resource is None and key.lower().endswith("family"):
                resource = f"cores:{key}"
            if resource:
                limit = u.get("limit")
                out.append(Quota(region=region, resource=resource, used=float(u.get("currentValue") or 0),
                                 limit=None if limit is None or limit < 0 else float(limit)))
        return out

    # --- the shared network of a region -----------------------------------------------------------

    def _ensure_group(self, region):
        if self._group_ready:
            return
        resources = self._client("resource")
        with calling(f"resource group {self.resource_group}"):
            try:
                resources.resource_groups.get(self.resource_group)
            except Exception as exc:
                if not is_not_found(exc):
                    raise
                resources.resource_groups.create_or_update(
                    self.resource_group, {"location": region, "tags": dict(SHARED_TAG)})
        self._group_ready = True

    def _subnet(self, region):
        """The id of the region's subnet: vnet, subnet and SSH-only security group made if missing."""
        with self._lock:
            if region in self._networks:
                return self._networks[region]
            self._ensure_group(region)
            net, rg = self._client("network"), self.resource_group
            vnet = self.config.get("vnet", "scitq-{region}").format(region=region)
            subnet = self.config.get("subnet", "scitq").format(region=region)
            prefix = self.config.get("address_prefix", "10.42.0.0/16")
            with calling(f"subnet {vnet}/{subnet}"):
                try:
                    self._networks[region] = net.subnets.get(rg, vnet, subnet).id
                    return self._networks[region]
                except Exception as exc:
                    if not is_not_found(exc):
                        raise
                subnet_body = {"properties": {"addressPrefix": prefix,
                                              "networkSecurityGroup": {"id": self._nsg(region)}}}
                try:
                    net.virtual_networks.get(rg, vnet)
                except Exception as exc:
                    if not is_not_found(exc):
                        raise
                    body = {"location": region, "tags": dict(SHARED_TAG),
                            "properties": {"addressSpace": {"addressPrefixes": [prefix]},
                                           "subnets": [{"name": subnet, **subnet_body}]}}
                    self._wait(net.virtual_networks.begin_create_or_update(rg, vnet, body), f"vnet {vnet}")
                else:
                    self._wait(net.subnets.begin_create_or_update(rg, vnet, subnet, subnet_body),
                               f"subnet {vnet}/{subnet}")
                self._networks[region] = net.subnets.get(rg, vnet, subnet).id
            return self._networks[region]

    def _nsg(self, region):
        net, rg = self._client("network"), self.resource_group
        name = self.config.get("nsg", "scitq-{region}").format(region=region)
        try:
            return net.network_security_groups.get(rg, name).id
        except Exception as exc:
            if not is_not_found(exc):
                raise
        rule = {"name": "ssh", "properties": {
            "priority": 1000, "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
            "sourceAddressPrefix": self.config.get("ssh_source", "*"), "sourcePortRange": "*",
            "destinationAddressPrefix": "*", "destinationPortRange": "22"}}
        body = {"location": region, "tags": dict(SHARED_TAG), "properties": {"securityRules": [rule]}}
        return self._wait(net.network_security_groups.begin_create_or_update(rg, name, body),
                          f"security group {name}")["id"]

    # --- instances -------------------------------------------------------------------------------

    def create(self, spec):
        key = spec.ssh_public_key or self.config.get("ssh_public_key")
        if not key:
            raise BadRequest("azure: an SSH public key is required (password logins are disabled)")
        if spec.spot:
            check_max_price(spec.max_price)
        compute, net, rg = self._client("compute"), self._client("network"), self.resource_group
        subnet_id = self._subnet(spec.region)
        tags = {**{str(k): str(v) for k, v in (spec.tags or {}).items()}, TAG: spec.name}
        ip_name, nic_name, disk_name = f"{spec.name}-ip", f"{spec.name}-nic", f"{spec.name}-osdisk"
        created = []        # what Azure accepted during this attempt, deleted again if it fails

        def accepted(kind, name, begin, *args):
            with calling(f"create {kind} {name}"):
                poller = begin(*args)            # an outright refusal raises here: nothing made
            created.append((kind, name))
            return self._wait(poller, f"create {kind} {name}")

        try:
            ip = accepted("ip", ip_name, net.public_ip_addresses.begin_create_or_update, rg, ip_name, {
                "location": spec.region, "tags": tags, "sku": {"name": "Standard"},
                "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4",
                               "deleteOption": "Delete"}})
            nic = accepted("nic", nic_name, net.network_interfaces.begin_create_or_update, rg, nic_name, {
                "location": spec.region, "tags": tags,
                "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
                    "subnet": {"id": subnet_id}, "privateIPAllocationMethod": "Dynamic",
                    "publicIPAddress": {"id": ip["id"], "properties": {"deleteOption": "Delete"}}}}]}})
            body = self._vm_body(spec, key, tags, nic["id"], disk_name)
            with calling(f"create vm {spec.name}"):
                poller = compute.virtual_machines.begin_create_or_update(rg, spec.name, body)
            created += [("vm", spec.name), ("disk", disk_name)]    # the OS disk comes with the VM
            vm = self._wait(poller, f"create vm {spec.name}")
        except BaseException as exc:
            left = self._teardown([(kind, name, True) for kind, name in created])
            if left:
                if any(e.target == ("disk", disk_name) for e in left):
                    self._tag_disk(disk_name, tags)      # so list() and the sweep see it
                if isinstance(exc, ProviderError):
                    exc.leftovers = [f"{e.target[0]} {e.target[1]}" for e in left]
            raise
        self._tag_disk(disk_name, tags)
        return self._instance(vm, nic, ip)

    def _vm_body(self, spec, key, tags, nic_id, disk_name):
        os_disk = {"name": disk_name, "createOption": "FromImage", "deleteOption": "Delete",
                   "managedDisk": {"storageAccountType": self.config.get("disk_type", "StandardSSD_LRS")}}
        if self.config.get("os_disk_gb"):
            os_disk["diskSizeGB"] = int(self.config["os_disk_gb"])
        os_profile = {"computerName": spec.name, "adminUsername": self.user, "linuxConfiguration": {
            "disablePasswordAuthentication": True,
            "ssh": {"publicKeys": [{"path": f"/home/{self.user}/.ssh/authorized_keys", "keyData": key}]}}}
        if spec.user_data:
            os_profile["customData"] = base64.b64encode(spec.user_data.encode()).decode()
        props = {
            "hardwareProfile": {"vmSize": spec.flavor},
            "storageProfile": {"imageReference": _image(spec.image or self.config.get("image")),
                               "osDisk": os_disk},
            "osProfile": os_profile,
            "networkProfile": {"networkInterfaces": [
                {"id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"}}]},
        }
        if spec.spot:
            props.update(priority="Spot", evictionPolicy="Delete",
                         billingProfile={"maxPrice": spec.max_price if spec.max_price is not None else -1})
        return {"location": spec.region, "tags": tags, "properties": props}

    def _tag_disk(self, disk_name, tags):
        """The VM's PUT cannot tag the OS disk it makes: tag it after, trying again while Azure is
        unwell. A tag that never comes is only logged: list() and delete() also know the disk by
        its name (see _named_disk)."""
        def attempt():
            try:
                with calling(f"tag disk {disk_name}"):
                    poller = self._client("compute").disks.begin_update(self.resource_group, disk_name,
                                                                        {"tags": tags})
                self._wait(poller, f"tag disk {disk_name}")
                return []
            except ScitqError as err:      # BadRequest too: a refused tag must not fail the create
                return [err]
        for err in self._backoff(attempt):
            log.warning("%s", err.message)

    def get(self, instance_id):
        name = last_segment(instance_id)
        compute, net, rg = self._client("compute"), self._client("network"), self.resource_group
        with calling(f"get vm {name}"):
            vm = rest(compute.virtual_machines.get(rg, name, expand="instanceView"))
        nic = ip = None
        nic_ids = _nic_ids(vm)
        if nic_ids:
            nic = self._maybe(lambda: net.network_interfaces.get(rg, last_segment(nic_ids[0])))
            ip_id = _public_ip_id(nic)
            if ip_id:
                ip = self._maybe(lambda: net.public_ip_addresses.get(rg, last_segment(ip_id)))
        return self._instance(vm, nic, ip)

    def list(self, tags=None):
        """VMs carrying the tags, and (as DELETED instances) the tagged NICs, IPs and disks of a
        VM that is gone: they bill until deleted, so the sweep must see them."""
        wanted = tags or {TAG: None}
        compute, net, rg = self._client("compute"), self._client("network"), self.resource_group
        with calling(f"list vms in {rg}"):
            try:
                vms = [rest(v) for v in compute.virtual_machines.list(rg, expand="instanceView")]
            except Exception as exc:
                if is_not_found(exc):        # no resource group yet: no instance either
                    return []
                raise
            nics = {n["id"].lower(): n for n in map(rest, net.network_interfaces.list(rg))}
            ips = {p["id"].lower(): p for p in map(rest, net.public_ip_addresses.list(rg))}
            disks = [rest(d) for d in compute.disks.list_by_resource_group(rg)]
        out = []
        for vm in vms:
            if not carries(vm.get("tags") or {}, wanted):
                continue
            nic_ids = _nic_ids(vm)
            nic = nics.get(nic_ids[0].lower()) if nic_ids else None
            ip_id = _public_ip_id(nic)
            out.append(self._instance(vm, nic, ips.get(ip_id.lower()) if ip_id else None))
        return out + self._leftovers([*nics.values(), *ips.values(), *disks],
                                     {v["name"].lower() for v in vms}, wanted)

    def _leftovers(self, resources, live, wanted):
        """A DELETED instance per host of no live VM that still has resources carrying the tags."""
        left = {}
        for resource in resources:
            owner = (resource.get("tags") or {}).get(TAG) or _named_disk(resource)
            shown = dict(resource, tags=resource.get("tags") or {TAG: owner})
            if owner and owner.lower() not in live and carries(shown["tags"], wanted):
                left.setdefault(owner, shown)
        return [Instance(provider=self.name, id=owner, name=owner, region=r.get("location"), flavor=None,
                         status=InstanceStatus.DELETED, user=self.user, tags=dict(r.get("tags") or {}))
                for owner, r in sorted(left.items())]

    def delete(self, instance_id):
        """Delete the VM, then its OS disk, NIC and public IP: those named by the VM, and those
        named `<name>-osdisk/-nic/-ip` that carry its tag (what an eviction or a crash left)."""
        name = last_segment(instance_id)
        vm = self._maybe(lambda: self._client("compute").virtual_machines.get(self.resource_group, name))
        targets = []
        if vm:
            targets.append(("vm", name, True))
            disk = ((vm.get("properties") or {}).get("storageProfile") or {}).get("osDisk") or {}
            disk_name = disk.get("name") or last_segment((disk.get("managedDisk") or {}).get("id"))
            if disk_name:
                targets.append(("disk", disk_name, True))
            targets += [("nic", last_segment(i), True) for i in _nic_ids(vm)]
        targets += [("disk", f"{name}-osdisk", False), ("nic", f"{name}-nic", False), ("ip", f"{name}-ip", False)]
        errors = self._teardown(targets, tag=name)
        if errors:
            raise errors[0]

    def _teardown(self, targets, tag=None):
        """Delete (kind, name, trusted) resources (see _teardown_pass), the failed ones tried again
        (see _backoff). Returns the errors left (each logged, its `target` the (kind, name) still
        there)."""
        def attempt():
            nonlocal targets
            targets, errors = self._teardown_pass(targets, tag)
            return errors
        return self._backoff(attempt)

    def _backoff(self, attempt):
        """attempt() -> errors, called again with back-off while Azure refuses only for a while,
        for up to `teardown_timeout` seconds. Returns the last errors."""
        deadline = time.monotonic() + float(self.config.get("teardown_timeout", 600))
        delay = float(self.config.get("teardown_backoff", 2.0))
        while True:
            errors = attempt()
            if not errors or not all(map(_retryable, errors)) or time.monotonic() + delay > deadline:
                return errors
            say(f"{errors[0].message}; trying again in {delay:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _teardown_pass(self, targets, tag):
        """Delete (kind, name, trusted) resources in the order VM, disks, NICs, IPs; an untrusted one
        only when it carries {TAG: tag}. A NIC's public IP goes with it. Gone already is fine.
        Returns (the targets that failed, their errors)."""
        compute, net, rg = self._client("compute"), self._client("network"), self.resource_group
        ops = {
            "vm": (compute.virtual_machines.get, compute.virtual_machines.begin_delete),
            "disk": (compute.disks.get, compute.disks.begin_delete),
            "nic": (net.network_interfaces.get, net.network_interfaces.begin_delete),
            "ip": (net.public_ip_addresses.get, net.public_ip_addresses.begin_delete),
        }
        order = {"vm": 0, "disk": 1, "nic": 2, "ip": 3}
        pending = sorted(targets, key=lambda t: order[t[0]])
        done, errors, failed = set(), [], []
        while pending:
            target = pending.pop(0)
            kind, name, trusted = target
            if (kind, name) in done:
                continue
            done.add((kind, name))
            get, begin_delete = ops[kind]
            try:
                if kind == "nic" or not trusted:
                    found = self._maybe(lambda: get(rg, name))
                    if not found:
                        continue
                    if not trusted and ((found.get("tags") or {}).get(TAG) or _named_disk(found)) != tag:
                        log.info("azure: %s %s does not carry %s=%s: left alone", kind, name, TAG, tag)
                        continue
                    ip_id = _public_ip_id(found) if kind == "nic" else None
                    if ip_id:
                        pending.append(("ip", last_segment(ip_id), True))
                with calling(f"delete {kind} {name}"):
                    try:
                        poller = begin_delete(rg, name)
                    except Exception as exc:
                        if is_not_found(exc):
                            continue
                        raise
                self._wait(poller, f"delete {kind} {name}")
            except InstanceNotFound:
                continue
            except ProviderError as err:
                log.warning("%s", err.message)
                err.target = (kind, name)
                errors.append(err)
                failed.append(target)
        return failed, errors

    def _maybe(self, fetch):
        """fetch() as REST JSON, or None when Azure says 404."""
        with calling("get"):
            try:
                return rest(fetch())
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise

    def _instance(self, vm, nic, ip):
        props = vm.get("properties") or {}
        tags = vm.get("tags") or {}
        ip_address = ((ip or {}).get("properties") or {}).get("ipAddress")
        configs = ((nic or {}).get("properties") or {}).get("ipConfigurations") or []
        private = (configs[0].get("properties") or {}).get("privateIPAddress") if configs else None
        status = STATUS.get(str(props.get("provisioningState") or "creating").lower(), InstanceStatus.CREATING)
        if status is InstanceStatus.RUNNING and _power_state(vm) in POWER_FAILED:
            status = InstanceStatus.FAILED
        if status is InstanceStatus.RUNNING and not ip_address:
            status = InstanceStatus.CREATING
        return Instance(provider=self.name, id=vm["name"], name=tags.get(TAG, vm["name"]),
                        region=vm.get("location"), flavor=(props.get("hardwareProfile") or {}).get("vmSize"),
                        status=status, ip=ip_address, private_ip=private,
                        user=(props.get("osProfile") or {}).get("adminUsername") or self.user,
                        tags=dict(tags), created_at=props.get("timeCreated"))


def _plain_http_bearer(credential, scope):
    """The ARM bearer-token policy, allowed over plain http (azure-core refuses by default: its
    documented switch is the per-request option enforce_https=False, set here on every request,
    long-running operation polls included). For a local fake only."""
    policies = require("azure.mgmt.core.policies", EXTRA)

    class PlainHTTPBearer(policies.ARMChallengeAuthenticationPolicy):
        def on_request(self, request):
            request.context.options["enforce_https"] = False
            super().on_request(request)

    return PlainHTTPBearer(credential, scope)


def _image(image):
    image = image or DEFAULT_IMAGE
    if isinstance(image, dict):
        return image
    if image.startswith("/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4:
        raise BadRequest(f"azure: image {image!r}: expected publisher:offer:sku:version or a resource id")
    return dict(zip(("publisher", "offer", "sku", "version"), parts))


def _named_disk(resource):
    """The host an untagged, unattached disk named "<host>-osdisk" belongs to (its tag PATCH
    failed, and the VM went without deleting it), else None. A disk with tags of its own is
    someone else's."""
    name = resource.get("name") or ""
    if (resource.get("type") or "").lower() != "microsoft.compute/disks" or resource.get("tags") \
            or resource.get("managedBy") or not name.endswith("-osdisk"):
        return None
    return name[:-len("-osdisk")]


def _power_state(vm):
    """running, stopped, deallocated...: from the instance view ($expand=instanceView); None without."""
    view = ((vm or {}).get("properties") or {}).get("instanceView") or {}
    for status in view.get("statuses") or []:
        code = status.get("code") or ""
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1].lower()
    return None


def _nic_ids(vm):
    nics = (((vm or {}).get("properties") or {}).get("networkProfile") or {}).get("networkInterfaces") or []
    return [n["id"] for n in nics if n.get("id")]


def _public_ip_id(nic):
    for config in ((nic or {}).get("properties") or {}).get("ipConfigurations") or []:
        ip = (config.get("properties") or {}).get("publicIPAddress") or {}
        if ip.get("id"):
            return ip["id"]
    return None


def _offered_in(sku, region):
    return region.lower() in {loc.lower() for loc in sku.get("locations") or []}


def _restricted(sku, region):
    """Not available to this subscription in the region (a zone-only restriction is not)."""
    for r in sku.get("restrictions") or []:
        if r.get("type") == "Location" and r.get("reasonCode") == "NotAvailableForSubscription":
            where = (r.get("restrictionInfo") or {}).get("locations") or r.get("values") or []
            if region.lower() in {w.lower() for w in where}:
                return True
    return False


def _price(table, name):
    """(on-demand, spot) hourly prices of a size, None when unknown."""
    value = table.get(name)
    if value is None:
        value = next((v for k, v in table.items() if str(k).lower() == name.lower()), None)
    if isinstance(value, dict):
        return value.get("ondemand"), value.get("spot")
    return value, None


def _gpu_model(name):
    for marker, model in GPU_MODELS:
        if marker.lower() in name.lower():
            return model
    return None
