"""A soak: 200 create/delete cycles of the recruiter's own create and delete jobs against each
cloud fake (the real adapters and SDKs), with failures injected at random (a fixed seed): when
the sweeps have run, no resource of ours is left in the fake and every host's ledger is closed
(issue 22, acceptance 6)."""
import random
import time

import pytest
from sqlalchemy import select

from scitq.errors import ScitqError
from scitq.server.models import Instance
from scitq.status import HostStatus

CYCLES = 200
SEED = 22
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"),      # the SDK's own
              pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]


def soak(sim, cloud_name, region, flavor, inject, leftovers, calm):
    """Run the cycles; `inject(rng, step, name)` arms a failure before a step ("create", "up":
    True leaves the host to the sweep, "delete"); `calm()` ends the failures; `leftovers()` is
    what of ours the cloud still holds. Returns the rows."""
    rng = random.Random(SEED)
    rec = sim.rec
    for i in range(CYCLES):
        if i % 10 == 9:                                      # the reconciler's periodic sweep
            rec.sweep_providers()
            sim.run_jobs()
        with sim.db.write() as s:
            inst = Instance(name=f"scitq-{cloud_name}-soak{i:03d}", provider=cloud_name, region=region,
                            flavor=flavor, hourly_cost=0.1, status=HostStatus.CREATING.value,
                            created_at=sim.clock())
            s.add(inst)
            s.flush()
            iid = inst.id
        name = f"scitq-{cloud_name}-soak{i:03d}"
        inject(rng, "create", name)
        try:
            rec.create_host(iid)
        except ScitqError:
            pass
        sim.clock.advance(60)
        if inject(rng, "up", name):
            continue
        with sim.db.write() as s:
            inst = s.get(Instance, iid)
            if inst.status != HostStatus.DEPLOYING.value:
                continue
            inst.status = HostStatus.DELETING.value          # what the plan's delete does
        inject(rng, "delete", name)
        try:
            rec.delete_host(iid)
        except ScitqError:
            pass
    calm()
    for _ in range(20):                                      # the sweeps, until all is settled
        sim.clock.advance(rec.sweep_every)
        rec.sweep_providers()
        sim.run_jobs()
        with sim.db.read() as s:
            open_rows = s.scalar(select(Instance.id).where(Instance.deleted_at.is_(None)).limit(1))
        if open_rows is None and not leftovers():
            break
    with sim.db.read() as s:
        return s.scalars(select(Instance)).all()


def check_closed(rows):
    assert len(rows) == CYCLES
    assert all(r.status in ("deleted", "failed") and r.deleted_at is not None and r.cost is not None
               for r in rows), [(r.name, r.status) for r in rows if r.deleted_at is None]
    assert {r.status for r in rows} == {"deleted", "failed"}        # both paths were taken


@pytest.fixture
def soak_sim(sims):
    return lambda clouds: sims(clouds, orphan_grace=0.0)


def test_azure_soak(soak_sim):
    pytest.importorskip("azure.mgmt.compute")
    from fakes.azure import FakeAzure

    from scitq.providers.azure import AzureProvider
    kinds = ("virtualMachines", "disks", "networkInterfaces", "publicIPAddresses")

    def inject(rng, step, name):
        if rng.random() > 0.35:
            return False
        if step == "create":
            rng.choice([
                lambda: cloud.fail_next_vm("OperationNotAllowed"),              # quota: NIC held
                lambda: cloud.fail_next_vm("AllocationFailed", stage="async"),
                lambda: cloud.fail_next_vm("SkuNotAvailable"),
                lambda: cloud.fail_next("PUT", "publicIPAddresses", 500, "InternalServerError", times=4),
                lambda: cloud.fail_next("PATCH", "disks", 500, "InternalServerError", times=4),
                lambda: cloud.throttle_next("PUT", "networkInterfaces", "0.01"),
            ])()
        elif step == "up":
            if name in cloud.names("virtualMachines") and rng.random() < 0.3:
                cloud.honor_delete_options = rng.random() < 0.5
                cloud.evict(name)                                           # a spot eviction
                cloud.honor_delete_options = True
                return True
        else:
            kind = rng.choice(kinds)
            rng.choice([
                lambda: cloud.fail_next("DELETE", kind, 200, "InternalServerError", stage="async"),
                lambda: cloud.fail_next("DELETE", kind, 200, "NetworkingInternalOperationError",
                                        stage="async", times=3),
                lambda: cloud.throttle_next("DELETE", kind, "0.01"),
                lambda: cloud.fail_next("DELETE", kind, 409, "AnotherOperationInProgress", times=2),
            ])()
        return False

    def calm():
        cloud._failures.clear()
        time.sleep(cloud.nic_reservation)

    with FakeAzure(polls=0, nic_reservation=0.05, quota={"cores": 10_000, "lowPriorityCores": 16,
                                                "standardDSv5Family": 10_000}) as cloud:
        provider = AzureProvider(cloud.provider_config(teardown_backoff=0.02, teardown_timeout=0.06))
        sim = soak_sim({"azure": provider})

        def leftovers():
            return {k: v for k, v in cloud.everything().items() if v}

        rows = soak(sim, "azure", "westeurope", "Standard_D2s_v5", inject, leftovers, calm)
        assert leftovers() == {}
        check_closed(rows)
        assert any(r.status == "deleted" and r.error and "left:" in r.error for r in rows)   # NIC held
        assert any(r.error and "eviction" in r.error for r in rows)


def test_ovh_soak(soak_sim, monkeypatch):
    pytest.importorskip("openstack")
    pytest.importorskip("ovh")
    from fakes.openstack import FakeOpenStack

    from scitq.providers.ovh import OVHProvider
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")

    def inject(rng, step, name):
        if rng.random() > 0.35:
            return False
        if step == "create":
            rng.choice([
                lambda: setattr(cloud, "fail_next_create", "quota"),
                lambda: setattr(cloud, "fail_next_create", "no_valid_host"),
                lambda: cloud.inject("POST", r"/servers$", 503, {"computeFault": {"code": 503, "message": "busy"}}),
                lambda: cloud.inject("POST", r"/servers$", 429, {"overLimit": {"code": 429, "message": "Over limit"}}),
                lambda: cloud.throttle_next("POST", r"/servers$", 0),           # waited out, then made
                lambda: (setattr(cloud, "fail_next_create", "no_valid_host"), setattr(cloud, "fail_deletes", 6)),
            ])()
        elif step == "delete":
            rng.choice([
                lambda: setattr(cloud, "fail_deletes", 1),
                lambda: setattr(cloud, "fail_deletes", 6),                   # beyond delete_timeout
                lambda: cloud.inject("DELETE", r"/servers/", 503, {"computeFault": {"code": 503, "message": "busy"}}),
                lambda: cloud.throttle_next("DELETE", r"/servers/", 0),
            ])()
        return False

    def calm():
        cloud.fail_deletes = 0
        cloud.fail_next_create = None
        cloud._injected.clear()

    with FakeOpenStack(regions=("GRA11",), build_delay=0.0, delete_delay=0.0) as cloud:
        for region in cloud.limits:
            cloud.limits[region].update(cores=10_000, instances=10_000, ram=10_000_000)
        provider = OVHProvider(cloud.provider_config(poll_interval=0.005, delete_timeout=0.05))
        sim = soak_sim({"ovh": provider})

        rows = soak(sim, "ovh", "GRA11", "b2-7", inject, cloud.live_servers, calm)
        assert not cloud.live_servers()
        # only the server is per host (Nova deletes its ports with it); the keypair is one per
        # SSH key, shared by every host booted with it: at most that one is left
        assert len(cloud.keypairs["GRA11"]) <= 1 and all(k.startswith("scitq-") for k in cloud.keypairs["GRA11"])
        check_closed(rows)
        assert any(r.status == "deleted" and r.error and "left:" in r.error for r in rows)
