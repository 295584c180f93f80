"""The contract every provider keeps, run against each one (local, the OVH fake, the Azure fake)."""
from scitq.errors import InstanceNotFound
from scitq.providers import TAG, Flavor, Instance, InstanceStatus


def check_catalog(provider, region):
    assert region in provider.regions()
    flavors = provider.flavors(region)
    assert flavors and all(isinstance(f, Flavor) for f in flavors)
    assert all(f.provider == provider.name and f.region == region for f in flavors)
    assert all(f.cpu > 0 and f.ram > 0 for f in flavors)
    return flavors


def check_lifecycle(provider, spec, wait_running):
    """create -> get -> list -> delete -> gone; delete twice is fine.
    `wait_running(provider, instance)` returns the instance once RUNNING (providers differ in
    whether create() blocks)."""
    created = provider.create(spec)
    assert isinstance(created, Instance) and created.provider == provider.name
    try:
        running = wait_running(provider, created)
        assert running.status is InstanceStatus.RUNNING and running.ip
        assert running.name == spec.name and running.flavor == spec.flavor
        assert provider.get(created.id).id == created.id
        listed = {i.id: i for i in provider.list()}
        assert created.id in listed and listed[created.id].tags.get(TAG) == spec.name
        # A None value asks for the key alone (recruitment's orphan and eviction sweeps).
        assert created.id in {i.id for i in provider.list({TAG: None})}
        assert created.id in {i.id for i in provider.list({TAG: spec.name})}
        assert created.id not in {i.id for i in provider.list({TAG: "someone-else"})}
        assert created.id not in {i.id for i in provider.list({"scitq_no_such_tag": None})}
    finally:
        provider.delete(created.id)
    provider.delete(created.id)                       # idempotent
    assert created.id not in {i.id for i in provider.list()}
    try:
        gone = provider.get(created.id)
    except InstanceNotFound:
        return
    assert gone.status in (InstanceStatus.DELETED, InstanceStatus.DELETING)
