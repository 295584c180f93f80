"""Recruitment simulated: the real reconciler and policy on a real database (both backends),
fake clouds (tests/fakes/cloud.py) and a fake clock. Failover, cost caps, deploy timeouts,
orphans, spot evictions, and 1,000 hosts for 200,000 tasks."""
import pytest
from sqlalchemy import select

from fakes.cloud import FakeCloud
from scitq.errors import QuotaExceeded
from scitq.server.models import Execution, Instance, Task, Worker
from scitq.status import TaskStatus


@pytest.fixture
def sim_of(sims):
    def make(clouds=None, **settings):
        settings.setdefault("tick", 10.0)
        return sims(clouds or {"fake": FakeCloud()}, **settings)
    return make


def test_a_batch_gets_its_hosts_which_go_when_it_drains(sim_of):
    sim = sim_of()
    b = sim.batch("b", tasks=60)
    rid = sim.recruiter(b, max_workers=3, tasks_per_worker=20, idle_timeout=120)
    plan = sim.tick()
    assert len(plan.create) == 3
    assert all(o.name == "small" and o.region == "r1" for _, o in plan.create)  # the cheapest
    sim.tick()
    assert len(sim.instances()) == 3                     # no second order while they deploy
    assert sim.register() == 3
    sim.tick()
    assert {i.status for i in sim.instances()} == {"running"}
    while sim.work(per_worker=5):
        assert not sim.tick().create
    for _ in range(11):                                  # 110 s idle: still there
        assert not sim.tick().delete
    plan = sim.tick(20)
    assert len(plan.delete) == 3
    assert sim.instances() == [] and sim.clouds["fake"].hosts == {}
    closed = sim.instances(live_only=False)
    assert all(i.status == "deleted" and i.cost > 0 and i.recruiter_id == rid for i in closed)
    lifetime = (closed[0].deleted_at - closed[0].created_at).total_seconds()
    assert closed[0].cost == pytest.approx(0.10 * lifetime / 3600)


def test_idle_hosts_of_a_drained_batch_are_reused(sim_of):
    sim = sim_of()
    first = sim.batch("first", tasks=30)
    sim.recruiter(first, max_workers=3, tasks_per_worker=10)
    sim.tick()
    sim.register()
    while sim.work(per_worker=5):
        sim.tick()
    second = sim.batch("second", tasks=20)
    r2 = sim.recruiter(second, max_workers=2, tasks_per_worker=10, concurrency=4)
    plan = sim.tick()
    assert len(plan.reuse) == 2 and not plan.create
    assert len(sim.clouds["fake"].created) == 3
    with sim.db.read() as s:
        reused = s.scalars(select(Worker).where(Worker.batch_id == second)).all()
        assert len(reused) == 2 and {w.concurrency for w in reused} == {4}
        # Set by the server: a restart of their process keeps them (not its deploy's flags).
        assert all(w.set_on_server == {"batch": "second", "concurrency": 4, "prefetch": 0} for w in reused)
        assert len(s.scalars(select(Instance).where(Instance.recruiter_id == r2)).all()) == 2
    sim.work(per_worker=10)
    plan = sim.tick(130)           # the third host (never reused) idled out; the others worked
    assert len(plan.delete) == 1


def test_a_quota_error_fails_over_to_another_region_then_comes_back(sim_of):
    cloud = FakeCloud()
    cloud.refuse["r1"] = QuotaExceeded("quota exceeded for instances in r1")
    sim = sim_of({"fake": cloud}, backoff=300)
    b = sim.batch("b", tasks=40)
    sim.recruiter(b, max_workers=2, tasks_per_worker=10)
    sim.tick()                                      # ordered in r1 (cheapest first): refused
    assert [i.status for i in sim.instances(live_only=False)] == ["failed", "failed"]
    assert ("fake", "r1", "small") in sim.rec.unhealthy
    plan = sim.tick()
    assert [o.region for _, o in plan.create] == ["r2", "r2"]
    assert len(cloud.hosts) == 2 and all(h.region == "r2" for h in cloud.hosts.values())
    del cloud.refuse["r1"]
    sim.register()
    sim.rec.unhealthy.clear()
    sim.clock.advance(300)
    b2 = sim.batch("more", tasks=10)
    sim.recruiter(b2, max_workers=1, tasks_per_worker=10)
    plan = sim.tick()
    assert [o.region for _, o in plan.create] == ["r1"]       # r1 is healthy again


def test_r1_is_tried_again_after_its_back_off(sim_of):
    cloud = FakeCloud(regions=("r1",), flavors=[("small", 2, 4, 20, 0.10)])
    cloud.refuse["r1"] = QuotaExceeded("no")
    sim = sim_of({"fake": cloud}, backoff=60)
    b = sim.batch("b", tasks=10)
    sim.recruiter(b, max_workers=1, tasks_per_worker=10)
    sim.tick()
    assert not sim.tick(30).create                  # nothing else fits: wait
    del cloud.refuse["r1"]
    assert [o.region for _, o in sim.tick(31).create] == ["r1"]


@pytest.mark.parametrize("cap", ["max_hourly_cost", "budget"])
def test_cost_caps_are_never_exceeded(sim_of, cap):
    sim = sim_of(tick=60)
    b = sim.batch("b", tasks=100_0)
    limits = {"max_hourly_cost": {"max_hourly_cost": 0.35}, "budget": {"budget": 0.5}}[cap]
    rid = sim.recruiter(b, max_workers=10, tasks_per_worker=10, **limits)
    worst_hourly = worst_spent = 0.0
    for _ in range(120):                       # two hours, a tick a minute
        sim.tick()
        sim.register()
        sim.work(per_worker=1)
        with sim.db.read() as s:
            live = s.scalars(select(Instance).where(Instance.recruiter_id == rid,
                                                    Instance.status.in_(["creating", "deploying", "running"]))).all()
            every = s.scalars(select(Instance).where(Instance.recruiter_id == rid)).all()
        worst_hourly = max(worst_hourly, sum(i.hourly_cost for i in live))
        worst_spent = max(worst_spent, sum(i.cost_so_far(sim.clock()) for i in every))
    if cap == "max_hourly_cost":
        assert 0.3 - 1e-9 <= worst_hourly <= 0.35 + 1e-9     # 3 small hosts, never 4
    else:
        assert worst_spent <= 0.5 + 1e-9
        assert worst_spent > 0.4                              # and it was used
        assert sim.instances() == []                          # every host went with the budget


def test_a_host_whose_worker_never_registers_is_deleted(sim_of):
    sim = sim_of(deploy_timeout=300)
    b = sim.batch("b", tasks=10)
    sim.recruiter(b, max_workers=1, tasks_per_worker=10)
    sim.tick()
    (inst,) = sim.instances()
    assert not sim.tick(290).delete
    plan = sim.tick(20)
    assert [iid for iid, _ in plan.delete] == [inst.id]
    assert "deploy timeout" in plan.delete[0][1]
    assert sim.clouds["fake"].deleted == [inst.provider_id] or len(sim.clouds["fake"].hosts) == 1
    assert len(sim.instances()) == 1 and sim.instances()[0].id != inst.id   # replaced


def test_an_orphan_is_deleted_after_its_grace(sim_of):
    from scitq.providers.base import InstanceSpec
    cloud = FakeCloud()
    sim = sim_of({"fake": cloud}, orphan_grace=600, sweep_every=60)
    b = sim.batch("b", tasks=10)
    sim.recruiter(b, max_workers=1, tasks_per_worker=10)
    sim.tick()
    sim.register()
    orphan = cloud.create(InstanceSpec(name="scitq-fake-lost", flavor="small", region="r1",
                                       tags={"scitq_instance": "999"}))
    manual = cloud.create(InstanceSpec(name="scitq-fake-manual", flavor="small", region="r1"))
    sim.rec.sweep_providers()
    sim.clock.advance(590)
    sim.rec.sweep_providers()
    assert orphan.id in cloud.hosts
    sim.clock.advance(20)
    sim.rec.sweep_providers()
    assert orphan.id not in cloud.hosts
    assert manual.id in cloud.hosts            # not a recruiter's: never touched
    assert len(sim.instances()) == 1           # ours stays


def test_the_sweep_leaves_alone_a_provider_that_rents_no_hosts(sim_of):
    """A lab's own machines (the static provider says rents_hosts = False) are lent and
    released, never deleted: no host of such a provider is an orphan or an eviction."""
    from scitq.providers.base import InstanceSpec
    from scitq.providers.static import StaticProvider
    lab = FakeCloud(name="lab")
    lab.rents_hosts = StaticProvider.rents_hosts
    sim = sim_of({"lab": lab}, orphan_grace=600, sweep_every=60)
    b = sim.batch("b", tasks=10)
    sim.recruiter(b, provider="lab", max_workers=1, tasks_per_worker=10)
    sim.tick()
    sim.register()
    (inst,) = sim.instances()
    stray = lab.create(InstanceSpec(name="scitq-lab-stray", flavor="small", region="r1",
                                    tags={"scitq_instance": "999"}))
    lab.evict(inst.provider_id)
    for _ in range(2):
        sim.rec.sweep_providers()
        sim.clock.advance(610)
    assert stray.id in lab.hosts                                  # no orphan deleted
    assert [i.id for i in sim.instances()] == [inst.id]           # still live: no eviction seen


def test_a_spot_eviction_gives_the_tasks_back_and_is_replaced(sim_of):
    cloud = FakeCloud()
    sim = sim_of({"fake": cloud})
    b = sim.batch("b", tasks=20)
    sim.recruiter(b, max_workers=1, tasks_per_worker=20, spot=False)
    sim.tick()
    sim.register()
    (inst,) = sim.instances()
    with sim.db.write() as s:                 # the worker runs two tasks
        w = s.scalar(select(Worker).where(Worker.name == inst.name))
        tasks = s.scalars(select(Task).where(Task.batch_id == b).limit(2)).all()
        for t in tasks:
            t.status, t.attempt, t.retries = TaskStatus.RUNNING.value, 1, 2
            s.add(Execution(task_id=t.id, worker_id=w.id, worker_name=w.name, status="running"))
        w.idle_since = None
        ids = [t.id for t in tasks]
    cloud.evict(inst.provider_id)
    sim.rec.sweep_providers()
    with sim.db.read() as s:
        back = s.scalars(select(Task).where(Task.id.in_(ids))).all()
        assert [(t.status, t.attempt, t.retries) for t in back] == [("pending", 0, 2)] * 2
        going = s.get(Instance, inst.id)
        assert going.status == "deleting" and "eviction" in going.error and going.cost is None
    plan = sim.tick()                           # the provider is asked to delete what is left
    assert len(plan.create) == 1                # and a replacement is rented
    with sim.db.read() as s:
        gone = s.get(Instance, inst.id)
        assert gone.status == "deleted" and "eviction" in gone.error and gone.cost is not None


def test_1000_hosts_for_200000_tasks_converge_without_churn(sim_of):
    clouds = {"fake": FakeCloud(regions=("r1", "r2", "r3", "r4"),
                                quota={"r1": 400, "r2": 400, "r3": 400, "r4": 400})}
    sim = sim_of(clouds, tick=10)
    batches = [sim.batch(f"b{i}", tasks=50_000) for i in range(4)]
    for b in batches:
        sim.recruiter(b, max_workers=250, tasks_per_worker=100, idle_timeout=60)
    creates, deletes, peak = sim.run(per_worker=20, max_passes=200)
    assert creates == 1000 and peak == 1000             # converged at max, never above
    assert deletes == 1000                              # each host deleted once, at the end
    assert len(clouds["fake"].created) == 1000
    with sim.db.read() as s:
        assert s.scalar(select(Task.id).where(Task.status != "succeeded").limit(1)) is None
    # The pass times are bench/recruit.py's to print (a test asserts no timing).


def test_a_recruiters_own_deploy_timeout_deletes_its_host_at_the_first_tick_that_reaches_it(sim_of):
    sim = sim_of(deploy_timeout=900)
    quick, slow = sim.batch("quick", tasks=10), sim.batch("slow", tasks=10)
    sim.recruiter(quick, max_workers=1, tasks_per_worker=10, deploy_timeout=120)
    sim.recruiter(slow, max_workers=1, tasks_per_worker=10)       # the server's 900 s
    sim.tick()
    first, other = sim.instances()
    assert first.batch_id == quick and other.batch_id == slow
    for _ in range(11):                               # 10 s ticks: 110 s old, still kept
        assert not sim.tick().delete
    plan = sim.tick()                                 # 120 s: the timeout is reached
    assert plan.delete == [(first.id, "no worker registered within the deploy timeout (120s)")]
    with sim.db.read() as s:
        gone = s.get(Instance, first.id)
        assert gone.status == "deleted" and (gone.deleted_at - gone.created_at).total_seconds() == 120
        assert gone.cost == pytest.approx(gone.hourly_cost * 120 / 3600)
    live = sim.instances()
    assert other.id in [i.id for i in live] and len(live) == 2       # the other kept; one replaced
    assert not any(iid == other.id for iid, _ in sim.tick(770).delete)   # 890 s
    assert [iid for iid, _ in sim.tick(10).delete if iid == other.id] == [other.id]   # 900 s


def test_a_host_whose_deploy_failed_for_good_is_deleted_within_a_tick_its_cost_closed(sim_of):
    from datetime import timedelta

    from scitq.server.models import Job
    sim = sim_of(deploy_timeout=900)
    b = sim.batch("b", tasks=10)
    sim.recruiter(b, max_workers=1, tasks_per_worker=10)
    sim.tick()
    (inst,) = sim.instances()
    assert inst.ip and inst.status == "deploying"
    with sim.db.write() as s:     # a failed deploy of a host that had this address before: not its own
        s.add(Job(kind="deploy", target=inst.ip, status="failed", attempts=3, params={},
                  created_at=inst.created_at - timedelta(hours=1)))
    assert not sim.tick().delete
    with sim.db.write() as s:     # its own deploy ran out of attempts
        s.add(Job(kind="deploy", target=inst.ip, status="failed", attempts=3, params={}, created_at=sim.clock()))
    plan = sim.tick()             # the next pass, long before the deploy timeout
    assert plan.delete == [(inst.id, "its deploy failed for good")]
    with sim.db.read() as s:
        gone = s.get(Instance, inst.id)
        assert gone.status == "deleted" and gone.deleted_at is not None
        assert gone.cost == pytest.approx(gone.hourly_cost * (gone.deleted_at - gone.created_at).total_seconds() / 3600)
    assert len(sim.instances()) == 1 and sim.instances()[0].id != inst.id      # replaced
