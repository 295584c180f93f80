"""The Azure fake answers each call the adapter makes as the published examples say Azure does
(issue 22, acceptance 7): one test per call, each naming the Azure/azure-rest-api-specs example
(or the public report, for the failures the examples do not show) whose status codes, headers,
body fields and error codes it checks. The fixtures are the fake's own, written from those facts.
The answers are read on the wire (httpx), not through the SDK, so nothing is smoothed over.
{SPECS}, {COMPUTE}, {DISKS}, {NETWORK} and {NETWORK_2022} in the docstrings stand for the folders below."""
import time

import httpx
import pytest

pytest.importorskip("azure.mgmt.compute")

from fakes.azure import FakeAzure  # noqa: E402

from scitq.providers import InstanceSpec  # noqa: E402
from scitq.providers.azure import AzureProvider  # noqa: E402

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5IGZvciBzY2l0cSB0ZXN0cyBvbmx5 scitq@test"
SPECS = "specification/"
COMPUTE = SPECS + "compute/resource-manager/Microsoft.Compute/ComputeRP/stable/2024-07-01/examples/"
DISKS = SPECS + "compute/resource-manager/Microsoft.Compute/DiskRP/stable/2024-03-02/examples/diskExamples/"
NETWORK = SPECS + "network/resource-manager/Microsoft.Network/stable/2023-09-01/examples/"
NETWORK_2022 = SPECS + "network/resource-manager/Microsoft.Network/stable/2022-05-01/examples/"


@pytest.fixture
def arm():
    """(cloud, http client, resource group URL) with one VM made by the adapter."""
    with FakeAzure(polls=1) as cloud:
        AzureProvider(cloud.provider_config()).create(
            InstanceSpec(name="vm1", flavor="Standard_D2s_v5", region="westeurope", ssh_public_key=KEY))
        with httpx.Client(base_url=cloud.url, headers={"Authorization": f"Bearer {cloud.token}"},
                          timeout=10) as http:
            yield cloud, http, f"/subscriptions/{cloud.subscription}/resourceGroups/scitq-test"


def poll(http, answer):
    """The final status of an operation, polled at its Azure-AsyncOperation URL."""
    for _ in range(50):
        status = http.get(answer.headers["Azure-AsyncOperation"]).json()
        if status["status"] != "InProgress":
            return status
        time.sleep(0.01)
    raise AssertionError("the operation never finished")


def until_done(http, answer):
    """Poll an accepted operation the way ARM says: Azure-AsyncOperation for its status, then
    Location for the result. Returns (final status JSON, Location answer)."""
    return poll(http, answer), http.get(answer.headers["Location"])


def accepted_delete(http, url):
    """A DELETE as the *Delete.json examples show it: 202 with Location (and, as Azure sends and
    the SDK recordings show, Azure-AsyncOperation too), then 200/204 once done, 204 when gone."""
    answer = http.delete(url)
    assert answer.status_code == 202 and not answer.content
    assert answer.headers["Location"] and answer.headers["Azure-AsyncOperation"]
    status, final = until_done(http, answer)
    assert status == {"status": "Succeeded"} and final.status_code in (200, 204)
    assert http.get(url).status_code == 404
    assert http.delete(url).status_code == 204            # gone already: 204, as listed


def test_resource_group_create(arm):
    """ResourceGroups_CreateOrUpdate: {SPECS}resources/resource-manager/Microsoft.Resources/stable/
    2022-09-01/examples/CreateResourceGroup.json (200 when it exists, 201 when made)."""
    _, http, _ = arm
    made = http.put("/subscriptions/5c2b8d2e-0f0e-4a59-9d3c-5a1b7e0c3f11/resourcegroups/another",
                    json={"location": "westeurope"})
    again = http.put("/subscriptions/5c2b8d2e-0f0e-4a59-9d3c-5a1b7e0c3f11/resourcegroups/another",
                     json={"location": "westeurope"})
    assert (made.status_code, again.status_code) == (201, 200)
    body = made.json()
    assert body["properties"] == {"provisioningState": "Succeeded"} and body["name"] == "another"
    assert body["type"] == "Microsoft.Resources/resourceGroups"


def test_resource_skus_list(arm):
    """ResourceSkus_List: {SPECS}compute/resource-manager/Microsoft.Compute/Skus/stable/2021-07-01/
    examples/skus/ListAvailableResourceSkus.json: value[] of resourceType, name, tier, size, family,
    locations, locationInfo[].zones and capabilities as {name, value} strings, and nextLink."""
    cloud, http, _ = arm
    cloud.sku_page = 3
    url = f"/subscriptions/{cloud.subscription}/providers/Microsoft.Compute/skus"
    page = http.get(url, params={"$filter": "location eq 'westeurope'"}).json()
    assert len(page["value"]) == 3 and page["nextLink"]
    vm = next(s for s in page["value"] if s["resourceType"] == "virtualMachines")
    assert {"name", "tier", "size", "family", "locations", "locationInfo", "capabilities"} <= set(vm)
    assert all(isinstance(c["value"], str) for c in vm["capabilities"])
    assert {"vCPUs", "MemoryGB", "LowPriorityCapable", "HyperVGenerations"} <= {c["name"] for c in vm["capabilities"]}
    seen = len(page["value"])
    while page.get("nextLink"):
        page = httpx.get(page["nextLink"], headers=http.headers).json()
        seen += len(page["value"])
    assert seen == len(cloud.skus) + 1                    # and the disk SKU


def test_usage_list(arm):
    """Usage_List: {COMPUTE}computeRPCommonExamples/Usage_List_MaximumSet_Gen.json: value[] of
    unit "Count", currentValue, limit and name {value, localizedValue}."""
    cloud, http, _ = arm
    usages = http.get(f"/subscriptions/{cloud.subscription}/providers/Microsoft.Compute/locations/"
                      "westeurope/usages").json()["value"]
    cores = next(u for u in usages if u["name"]["value"] == "cores")
    assert cores["unit"] == "Count" and cores["currentValue"] == 2 and cores["limit"] == 20
    assert cores["name"]["localizedValue"]


def test_vnet_subnet_and_security_group_create(arm):
    """VirtualNetworks_CreateOrUpdate ({NETWORK}VirtualNetworkCreateSubnet.json), Subnets_CreateOrUpdate
    ({NETWORK_2022}SubnetCreate.json), NetworkSecurityGroups_CreateOrUpdate
    ({NETWORK_2022}NetworkSecurityGroupCreate.json): 200 or 201, Azure-AsyncOperation to poll."""
    _, http, rg = arm
    nsg = http.put(f"{rg}/providers/Microsoft.Network/networkSecurityGroups/nsg2",
                   json={"location": "westeurope", "properties": {}})
    vnet = http.put(f"{rg}/providers/Microsoft.Network/virtualNetworks/vnet2", json={
        "location": "westeurope", "properties": {"addressSpace": {"addressPrefixes": ["10.0.0.0/16"]},
                                                 "subnets": [{"name": "s1", "properties": {"addressPrefix": "10.0.0.0/24"}}]}})
    subnet = http.put(f"{rg}/providers/Microsoft.Network/virtualNetworks/vnet2/subnets/s2",
                      json={"properties": {"addressPrefix": "10.0.1.0/24"}})
    for answer in (nsg, vnet, subnet):
        assert answer.status_code == 201 and poll(http, answer) == {"status": "Succeeded"}
    assert vnet.json()["properties"]["subnets"][0]["id"].endswith("/virtualNetworks/vnet2/subnets/s1")
    assert http.get(f"{rg}/providers/Microsoft.Network/virtualNetworks/vnet2/subnets/s2").json()["id"] \
        .endswith("/subnets/s2")


def test_public_ip_create_get_list(arm):
    """PublicIPAddresses_CreateOrUpdate ({NETWORK}PublicIpAddressCreateDefaults.json: 200/201, type
    Microsoft.Network/publicIPAddresses, provisioningState, publicIPAddressVersion,
    publicIPAllocationMethod, sku.name) and PublicIPAddresses_List ({NETWORK}PublicIpAddressList.json)."""
    cloud, http, rg = arm
    url = f"{rg}/providers/Microsoft.Network/publicIPAddresses/ip2"
    made = http.put(url, json={"location": "westeurope", "sku": {"name": "Standard"}, "properties": {
        "publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4", "deleteOption": "Delete"}})
    assert made.status_code == 201
    body = made.json()
    assert body["type"] == "Microsoft.Network/publicIPAddresses" and body["sku"] == {"name": "Standard"}
    assert body["properties"]["provisioningState"] == "Creating" and body["properties"]["ipAddress"]
    assert http.put(url, json={"location": "westeurope", "properties": {}}).status_code == 200
    listed = http.get(f"{rg}/providers/Microsoft.Network/publicIPAddresses").json()["value"]
    assert {p["name"] for p in listed} == {"vm1-ip", "ip2"}


def test_public_ip_delete_and_its_refusal_while_in_use(arm):
    """PublicIPAddresses_Delete ({NETWORK}PublicIpAddressDelete.json: 200, 202 with Location, 204);
    in use by a NIC, 400 PublicIPAddressCannotBeDeleted with Azure's message (as quoted in
    ernestio/ernest #514 and oap-project/cloudtik #158)."""
    _, http, rg = arm
    refused = http.delete(f"{rg}/providers/Microsoft.Network/publicIPAddresses/vm1-ip")
    assert refused.status_code == 400
    err = refused.json()["error"]
    assert err["code"] == "PublicIPAddressCannotBeDeleted"
    assert "can not be deleted since it is still allocated to resource" in err["message"]
    assert "aka.ms/deletepublicip" in err["message"]
    http.put(f"{rg}/providers/Microsoft.Network/publicIPAddresses/ip3",
             json={"location": "westeurope", "properties": {}})
    accepted_delete(http, f"{rg}/providers/Microsoft.Network/publicIPAddresses/ip3")


def test_nic_create_and_list(arm):
    """NetworkInterfaces_CreateOrUpdate ({NETWORK}NetworkInterfaceCreate.json: 200/201,
    ipConfigurations[] with id, privateIPAddress, privateIPAllocationMethod, publicIPAddress.id,
    subnet.id) and NetworkInterfaces_List ({NETWORK}NetworkInterfaceList.json)."""
    cloud, http, rg = arm
    subnet = cloud.resource("networkInterfaces", "vm1-nic")["properties"]["ipConfigurations"][0]["properties"]["subnet"]
    made = http.put(f"{rg}/providers/Microsoft.Network/networkInterfaces/nic2", json={
        "location": "westeurope", "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
            "subnet": subnet, "privateIPAllocationMethod": "Dynamic"}}]}})
    assert made.status_code == 201
    config = made.json()["properties"]["ipConfigurations"][0]
    assert config["id"].endswith("/networkInterfaces/nic2/ipConfigurations/ipconfig1")
    assert config["properties"]["privateIPAddress"] and config["properties"]["subnet"]["id"] == subnet["id"]
    assert made.json()["type"] == "Microsoft.Network/networkInterfaces"
    listed = http.get(f"{rg}/providers/Microsoft.Network/networkInterfaces").json()["value"]
    assert {n["name"] for n in listed} == {"vm1-nic", "nic2"}


def test_nic_delete_its_refusals_and_its_reservation(arm):
    """NetworkInterfaces_Delete ({NETWORK_2022}NetworkInterfaceDelete.json: 200, 202 with Location,
    204); attached to a VM, 400 NicInUse; after a failed VM PUT, 400 NicReservedForAnotherVm for a
    while (Azure's 180 s, karpenter-provider-azure #92, bosh-azure-cpi-release #366)."""
    cloud, http, rg = arm
    in_use = http.delete(f"{rg}/providers/Microsoft.Network/networkInterfaces/vm1-nic")
    assert in_use.status_code == 400 and in_use.json()["error"]["code"] == "NicInUse"
    cloud.nic_reservation = 0.3
    subnet = cloud.resource("networkInterfaces", "vm1-nic")["properties"]["ipConfigurations"][0]["properties"]["subnet"]
    nic_id = http.put(f"{rg}/providers/Microsoft.Network/networkInterfaces/nic4", json={
        "location": "westeurope", "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
            "subnet": subnet}}]}}).json()["id"]
    cloud.fail_next_vm("OperationNotAllowed")
    refused = http.put(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm2", json={
        "location": "westeurope", "properties": {"networkProfile": {"networkInterfaces": [{"id": nic_id}]}}})
    assert refused.status_code == 409
    held = http.delete(f"{rg}/providers/Microsoft.Network/networkInterfaces/nic4")
    assert held.status_code == 400 and held.json()["error"]["code"] == "NicReservedForAnotherVm"
    assert "retry after 180 seconds" in held.json()["error"]["message"]
    assert "/virtualMachines/vm2" in held.json()["error"]["message"]
    time.sleep(0.35)
    accepted_delete(http, f"{rg}/providers/Microsoft.Network/networkInterfaces/nic4")


def test_vm_create(arm):
    """VirtualMachines_CreateOrUpdate ({COMPUTE}virtualMachineExamples/VirtualMachine_Create_With
    SshAuthentication.json: 200/201, provisioningState Creating, vmId, the OS disk managed)."""
    cloud, http, rg = arm
    nic = http.put(f"{rg}/providers/Microsoft.Network/networkInterfaces/nic3", json={
        "location": "westeurope", "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
            "subnet": cloud.resource("networkInterfaces", "vm1-nic")["properties"]["ipConfigurations"][0]
            ["properties"]["subnet"]}}]}}).json()
    body = {"location": "westeurope", "properties": {
        "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
        "storageProfile": {"imageReference": {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                                              "version": "latest"},
                           "osDisk": {"name": "vm3-osdisk", "createOption": "FromImage", "deleteOption": "Delete"}},
        "osProfile": {"computerName": "vm3", "adminUsername": "scitq", "linuxConfiguration": {
            "disablePasswordAuthentication": True,
            "ssh": {"publicKeys": [{"path": "/home/scitq/.ssh/authorized_keys", "keyData": KEY}]}}},
        "networkProfile": {"networkInterfaces": [{"id": nic["id"], "properties": {"primary": True}}]}}}
    made = http.put(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm3", json=body)
    assert made.status_code == 201 and made.headers["Azure-AsyncOperation"]
    props = made.json()["properties"]
    assert props["provisioningState"] == "Creating" and props["vmId"]
    assert props["storageProfile"]["osDisk"]["managedDisk"]["id"].endswith("/disks/vm3-osdisk")
    assert poll(http, made) == {"status": "Succeeded"}
    assert http.get(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm3").json()["properties"][
        "provisioningState"] == "Succeeded"


def test_vm_get_with_its_instance_view_and_list(arm):
    """VirtualMachines_Get with $expand=instanceView ({COMPUTE}virtualMachineExamples/VirtualMachine_
    Get_InstanceView.json: statuses ProvisioningState/succeeded then PowerState/running, each with
    level and displayStatus) and VirtualMachines_List ({COMPUTE}virtualMachineExamples/
    VirtualMachine_List_MaximumSet_Gen.json: value[])."""
    cloud, http, rg = arm
    url = f"{rg}/providers/Microsoft.Compute/virtualMachines/vm1"
    assert "instanceView" not in http.get(url).json()["properties"]
    statuses = http.get(url, params={"$expand": "instanceView"}).json()["properties"]["instanceView"]["statuses"]
    assert [s["code"] for s in statuses] == ["ProvisioningState/succeeded", "PowerState/running"]
    assert all(s["level"] == "Info" and s["displayStatus"] for s in statuses)
    cloud.power("vm1", "deallocated")
    listed = http.get(f"{rg}/providers/Microsoft.Compute/virtualMachines", params={"$expand": "instanceView"})
    (vm,) = listed.json()["value"]
    assert vm["properties"]["instanceView"]["statuses"][1]["code"] == "PowerState/deallocated"


def test_vm_delete_and_its_asynchronous_failure(arm):
    """VirtualMachines_Delete ({SPECS}compute/resource-manager/Microsoft.Compute/ComputeRP/stable/
    2023-09-01/examples/virtualMachineExamples/VirtualMachine_Delete_Force.json: 200, 202, 204); an
    accepted delete may fail afterwards: its operation says Failed with the error, the VM stays."""
    cloud, http, rg = arm
    url = f"{rg}/providers/Microsoft.Compute/virtualMachines/vm1"
    cloud.fail_next("DELETE", "virtualMachines", 200, "InternalExecutionError", "An internal execution error occurred.",
                    stage="async")
    answer = http.delete(url)
    assert answer.status_code == 202
    status, final = until_done(http, answer)
    assert status["status"] == "Failed" and status["error"]["code"] == "InternalExecutionError"
    assert final.status_code == 400 and final.json()["error"]["code"] == "InternalExecutionError"
    assert http.get(url).json()["properties"]["provisioningState"] == "Succeeded"
    accepted_delete(http, url)


def test_disk_update_get_list_and_delete(arm):
    """Disks_Update ({DISKS}Disk_Update_ChangeTier.json: 202 with Location and the disk Updating,
    then 200 Succeeded), Disks_ListByResourceGroup ({DISKS}Disk_ListByResourceGroup.json) and
    Disks_Delete ({DISKS}Disk_Delete.json: 200, 202 with Location, 204)."""
    cloud, http, rg = arm
    url = f"{rg}/providers/Microsoft.Compute/disks/vm1-osdisk"
    answer = http.patch(url, json={"tags": {"scitq": "vm1"}})
    assert answer.status_code == 202 and answer.headers["Location"]
    assert answer.json()["properties"]["provisioningState"] == "Updating"
    status, final = until_done(http, answer)
    assert status == {"status": "Succeeded"} and final.status_code == 200
    assert final.json()["tags"] == {"scitq": "vm1"} and final.json()["properties"]["provisioningState"] == "Succeeded"
    assert [d["name"] for d in http.get(f"{rg}/providers/Microsoft.Compute/disks").json()["value"]] == ["vm1-osdisk"]
    attached = http.delete(url)
    assert attached.status_code == 409 and attached.json()["error"]["code"] == "OperationNotAllowed"
    cloud.honor_delete_options = False
    cloud.evict("vm1")
    accepted_delete(http, url)


def test_throttling(arm):
    """ARM throttling: 429 with Retry-After and code TooManyRequests (the ARM throttling docs;
    Retry-After of 120 to 1,200 s as recorded in the specs' and pulumi's issues)."""
    cloud, http, rg = arm
    cloud.throttle_next("GET", "virtualMachines", 1200)
    answer = http.get(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm1")
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "1200"
    assert answer.json()["error"]["code"] == "TooManyRequests"
    assert http.get(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm1").status_code == 200


@pytest.mark.parametrize("price, status, code", [(0, 400, "MaxPriceValueInvalid"),
                                                  (0.001, 409, "VariablePriceGreaterThanProvidedMaxPrice")])
def test_spot_price_refusals(arm, price, status, code):
    """The spot error codes of the Azure docs (virtual-machines/error-codes-spot): maxPrice is -1
    or a decimal above zero; one below the current spot price is refused."""
    cloud, http, rg = arm
    vm = cloud.resource("virtualMachines", "vm1")
    body = {"location": "westeurope", "properties": dict(vm["properties"], priority="Spot", evictionPolicy="Delete",
                                                         billingProfile={"maxPrice": price})}
    answer = http.put(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm9", json=body)
    assert answer.status_code == status and answer.json()["error"]["code"] == code


RESOURCES = SPECS + "resources/resource-manager/Microsoft.Resources/stable/2022-09-01/examples/"


def not_found(answer, code, *words):
    """A 404 in ARM's error shape: {"error": {"code", "message"}}, the message naming the resource."""
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == code and all(w in error["message"] for w in words), error


def got(http, url, kind):
    """A GET that answers 200 with the resource: its id the URL, its type `kind`."""
    answer = http.get(url)
    assert answer.status_code == 200
    body = answer.json()
    assert body["type"] == kind and body["id"] == url and body["location"] == "westeurope"
    return body


def test_resource_group_get_and_its_absence(arm):
    """ResourceGroups_Get ({RESOURCES}GetResourceGroup.json: 200, id, name, type
    Microsoft.Resources/resourceGroups, location, properties.provisioningState Succeeded); one that
    does not exist: 404 ResourceGroupNotFound "Resource group '<name>' could not be found." (ARM's
    answer, as the azure-sdk-for-python recordings of resource_groups.get show it), and so does any
    resource under it."""
    cloud, http, rg = arm
    answer = http.get(rg)
    assert answer.status_code == 200
    body = answer.json()
    assert {"id", "name", "type", "location", "properties"} <= set(body)
    assert body["id"] == rg and body["type"] == "Microsoft.Resources/resourceGroups"
    assert body["properties"] == {"provisioningState": "Succeeded"} and body["location"] == "westeurope"
    other = f"/subscriptions/{cloud.subscription}/resourceGroups/nowhere"
    not_found(http.get(other), "ResourceGroupNotFound", "Resource group 'nowhere' could not be found.")
    not_found(http.get(f"{other}/providers/Microsoft.Network/networkInterfaces/x"), "ResourceGroupNotFound")


def test_vnet_and_subnet_get(arm):
    """VirtualNetworks_Get ({NETWORK}VirtualNetworkGet.json: 200, type Microsoft.Network/virtualNetworks,
    properties.addressSpace.addressPrefixes, subnets[] of id, name, properties.addressPrefix and
    provisioningState) and Subnets_Get ({NETWORK}SubnetGet.json); absent: 404 ResourceNotFound for the
    network, NotFound for a subnet (what the adapter reads as "make it")."""
    _, http, rg = arm
    url = f"{rg}/providers/Microsoft.Network/virtualNetworks/scitq-westeurope"
    vnet = got(http, url, "Microsoft.Network/virtualNetworks")
    assert vnet["properties"]["provisioningState"] == "Succeeded"
    assert vnet["properties"]["addressSpace"] == {"addressPrefixes": ["10.42.0.0/16"]}
    (subnet,) = vnet["properties"]["subnets"]
    assert subnet["id"] == f"{url}/subnets/scitq" and subnet["properties"]["addressPrefix"] == "10.42.0.0/16"
    assert subnet["properties"]["provisioningState"] == "Succeeded"
    assert http.get(f"{url}/subnets/scitq").json() == subnet
    not_found(http.get(f"{rg}/providers/Microsoft.Network/virtualNetworks/nope"), "ResourceNotFound",
              "Microsoft.Network/virtualNetworks/nope", "scitq-test")
    not_found(http.get(f"{url}/subnets/nope"), "NotFound", f"{url}/subnets/nope")


def test_security_group_get(arm):
    """NetworkSecurityGroups_Get ({NETWORK}NetworkSecurityGroupGet.json: 200, type
    Microsoft.Network/networkSecurityGroups, securityRules[] with id, name and properties (priority,
    direction, access, protocol, ports, prefixes, provisioningState), and Azure's six
    defaultSecurityRules); absent: 404 ResourceNotFound."""
    _, http, rg = arm
    url = f"{rg}/providers/Microsoft.Network/networkSecurityGroups/scitq-westeurope"
    nsg = got(http, url, "Microsoft.Network/networkSecurityGroups")
    (ssh,) = nsg["properties"]["securityRules"]
    assert ssh["id"] == f"{url}/securityRules/ssh" and ssh["properties"]["provisioningState"] == "Succeeded"
    assert {k: ssh["properties"][k] for k in ("priority", "direction", "access", "protocol", "destinationPortRange")} \
        == {"priority": 1000, "direction": "Inbound", "access": "Allow", "protocol": "Tcp", "destinationPortRange": "22"}
    assert [r["name"] for r in nsg["properties"]["defaultSecurityRules"]] == [
        "AllowVnetInBound", "AllowAzureLoadBalancerInBound", "DenyAllInBound", "AllowVnetOutBound",
        "AllowInternetOutBound", "DenyAllOutBound"]
    assert all(r["id"] == f"{url}/defaultSecurityRules/{r['name']}" for r in nsg["properties"]["defaultSecurityRules"])
    not_found(http.get(f"{rg}/providers/Microsoft.Network/networkSecurityGroups/nope"), "ResourceNotFound")


@pytest.mark.parametrize("path, kind, example", [
    ("Microsoft.Network/networkInterfaces/vm1-nic", "Microsoft.Network/networkInterfaces",
     "{NETWORK}NetworkInterfaceGet.json"),
    ("Microsoft.Network/publicIPAddresses/vm1-ip", "Microsoft.Network/publicIPAddresses",
     "{NETWORK}PublicIpAddressGet.json"),
    ("Microsoft.Compute/disks/vm1-osdisk", "Microsoft.Compute/disks", "{DISKS}Disk_Get.json"),
])
def test_nic_ip_and_disk_get_and_their_absence(arm, path, kind, example):
    """NetworkInterfaces_Get ({NETWORK}NetworkInterfaceGet.json: ipConfigurations[] with
    privateIPAddress, publicIPAddress.id, subnet.id; virtualMachine.id), PublicIPAddresses_Get
    ({NETWORK}PublicIpAddressGet.json: ipAddress, ipConfiguration.id, sku) and Disks_Get
    ({DISKS}Disk_Get.json: managedBy, sku, diskSizeGB, diskState, creationData, timeCreated): 200
    with id, name, type, location, tags {scitq: <host>}; absent: 404 ResourceNotFound "The Resource
    '<type>/<name>' under resource group '<group>' was not found." (ARM's message)."""
    _, http, rg = arm
    body = got(http, f"{rg}/providers/{path}", kind)
    assert body["tags"]["scitq"] == "vm1", example
    props = body["properties"]
    vm_id = f"{rg}/providers/Microsoft.Compute/virtualMachines/vm1"
    if kind.endswith("networkInterfaces"):
        config = props["ipConfigurations"][0]["properties"]
        assert config["privateIPAddress"] and config["subnet"]["id"].endswith("/subnets/scitq")
        assert config["publicIPAddress"]["id"].endswith("/publicIPAddresses/vm1-ip")
        assert props["virtualMachine"] == {"id": vm_id}
    elif kind.endswith("publicIPAddresses"):
        assert props["ipAddress"] and props["ipConfiguration"]["id"].endswith("/vm1-nic/ipConfigurations/ipconfig1")
        assert body["sku"] == {"name": "Standard"} and props["publicIPAllocationMethod"] == "Static"
    else:
        assert body["managedBy"] == vm_id and body["sku"] == {"name": "StandardSSD_LRS"}
        assert props["diskState"] == "Attached" and props["creationData"]["createOption"] == "FromImage"
        assert props["diskSizeGB"] > 0 and props["timeCreated"]
    gone = f"{rg}/providers/{path.rsplit('/', 1)[0]}/gone"
    not_found(http.get(gone), "ResourceNotFound", f"The Resource '{kind}/gone' under resource group 'scitq-test' "
                                                  "was not found.")


def test_vm_create_that_fails_asynchronously(arm):
    """VirtualMachines_CreateOrUpdate accepted ({COMPUTE}virtualMachineExamples/VirtualMachine_Create_
    WithSshAuthentication.json: 201, Azure-AsyncOperation) whose operation then fails, as ARM's
    asynchronous operations are documented (azure-resource-manager/management/async-operations:
    status "Failed" with error {code, message}; here AllocationFailed, of the Azure docs'
    allocation failures): the VM stays with provisioningState Failed and its OS disk made."""
    cloud, http, rg = arm
    vm = cloud.resource("virtualMachines", "vm1")
    nic = http.put(f"{rg}/providers/Microsoft.Network/networkInterfaces/nic5", json={
        "location": "westeurope", "properties": {"ipConfigurations": [{"name": "ipconfig1", "properties": {
            "subnet": cloud.resource("networkInterfaces", "vm1-nic")["properties"]["ipConfigurations"][0]
            ["properties"]["subnet"]}}]}}).json()
    props = dict(vm["properties"], networkProfile={"networkInterfaces": [{"id": nic["id"]}]},
                 storageProfile=dict(vm["properties"]["storageProfile"], osDisk={
                     "name": "vm5-osdisk", "createOption": "FromImage", "deleteOption": "Delete"}))
    cloud.fail_next_vm("AllocationFailed", "Allocation failed. We do not have sufficient capacity for the "
                       "requested VM size in this region.", stage="async")
    answer = http.put(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm5",
                      json={"location": "westeurope", "properties": props})
    assert answer.status_code == 201 and answer.headers["Azure-AsyncOperation"]
    assert answer.json()["properties"]["provisioningState"] == "Creating"
    status = poll(http, answer)
    assert status["status"] == "Failed" and status["error"]["code"] == "AllocationFailed"
    assert "sufficient capacity" in status["error"]["message"]
    failed = http.get(f"{rg}/providers/Microsoft.Compute/virtualMachines/vm5").json()
    assert failed["properties"]["provisioningState"] == "Failed"
    assert http.get(f"{rg}/providers/Microsoft.Compute/disks/vm5-osdisk").status_code == 200
