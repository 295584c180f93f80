"""The reconciler: observe the database and the providers, ask the policy, carry the plan out.

One thread in the server (a `Loop`), woken by recruiter changes and otherwise every `tick`;
one pass at a time across the server processes of a database (Database.once). Each pass reads
the recruiters, their batches' remaining work, the live instances and their workers, and the
flavor catalog in one read transaction, then asks the providers (an empty catalog, quotas)
outside any transaction; `policy.plan()` says what to create, reuse and delete, and this
module does it in one short write transaction:
- a create is an instance row (status creating) and a `create` job, which rents the host
  through the provider and then queues the usual `deploy` job (the worker's name is the
  instance's name, which is how the two are matched);
- a reuse points an idle worker at another batch (its batch, concurrency and prefetch);
- a delete gives the worker's tasks back (no retry spent), marks the worker offline and
  queues a `delete` job; the instance's cost is closed when the provider confirms.
Every `sweep_every` seconds it also lists each provider's hosts: a host of ours the provider no
longer has (a spot eviction) gives its tasks back and is deleted through the provider (what the
eviction left, a public IP, still bills) before it is closed, so the policy replaces it; a host
deleting that the provider no longer lists is closed, one it still lists gets a new delete job
when its last one gave up; a host tagged by a recruiter that the database does not know (an
orphan) is deleted after `orphan_grace`. A host stays deleting, its cost running, until the
provider says it is gone. Quota and capacity errors mark (provider, region, flavor) unhealthy for
`backoff` seconds, so the next pass tries the next choice.
"""
import logging
import secrets
from datetime import timedelta

from sqlalchemy import func, insert, select, update

from scitq.errors import ProviderError, ScitqError
from scitq.providers.base import TAG, InstanceSpec, InstanceStatus, reporting
from scitq.server.recruit import policy
from scitq.server.recruit.ledger import cost_of
from scitq.server import worker_calls, tokens
from scitq.server.db import add_events, event_row, record
from scitq.server.dispatch import ACTIVE
from scitq.server.lifecycle import give_back
from scitq.server.loop import Loop
from scitq.server.models import (Batch, Execution, Flavor, Instance, Job, Recruiter, Task,
                                 Worker, utcnow)
from scitq.status import (LIVE_HOSTS, BatchStatus, HostStatus, JobStatus, TaskStatus,
                          WorkerStatus)

log = logging.getLogger(__name__)

RECRUITED = "scitq_instance"     # tag of the hosts a recruiter made: the instance row's id
WORK = (TaskStatus.PENDING.value, TaskStatus.WAITING.value)
REMAINING = WORK + (TaskStatus.ASSIGNED.value, TaskStatus.RUNNING.value)


class Reconciler(Loop):
    name = "reconciler"
    tick = 10.0               # seconds between passes when nothing wakes it
    deploy_timeout = 900.0    # seconds for a host's worker to register, from its order,
                              # unless its recruiter says its own
    orphan_grace = 600.0      # seconds a host unknown to the database may live
    backoff = 600.0           # seconds a failing (provider, region, flavor) is left alone
    sweep_every = 60.0        # seconds between listings of the providers' hosts

    def __init__(self, db, providers, *, jobs=None, notifier=None, server_url=None,
                 deploy_engine="pyinfra", clock=None, **tunables):
        super().__init__()
        self.db = db
        self.providers = providers
        self.jobs = jobs
        self.notifier = notifier
        self.server_url = server_url          # f(provider name) -> URL the hosts reach us at
        self.deploy_engine = deploy_engine
        self.clock = clock or utcnow
        for key, value in tunables.items():
            if value is not None:
                if not hasattr(type(self), key):
                    raise TypeError(f"unknown reconciler setting {key}")
                setattr(self, key, value)
        self.unhealthy = {}                   # (provider, region, flavor) -> until (datetime)
        self.refused = {}                     # (provider, region, flavor) -> the provider's last refusal
        self._seen_orphans = {}               # (provider, provider id) -> first seen
        self._last_sweep = None
        self.last_plan = policy.Plan()

    # -- the loop ------------------------------------------------------------------

    def step(self):
        self.reconcile()
        now = self.clock()
        if self._last_sweep is None or (now - self._last_sweep).total_seconds() >= self.sweep_every:
            self._last_sweep = now
            self.sweep_providers()

    def reconcile(self):
        """One pass: returns the plan it carried out. It runs in one server process at a time
        (two would both rent hosts for one shortfall): observe in a read transaction, ask the
        providers (catalog, quotas) outside any, then apply in a short write transaction."""
        with self.db.once("reconciler"):
            now, rules, hosts, registered, offers, unsent = self._look()
            if not rules and not hosts:
                self.last_plan = policy.Plan()
                return self.last_plan
            offers += self._missing_offers(offers, rules, store=True)
            self.unhealthy = {k: t for k, t in self.unhealthy.items() if t > now}
            plan = self._decide(rules, hosts, offers, self._quota_room(rules, unsent), now)
            with self.db.write() as s:
                self._mark_running(s, registered, now)
                created, deleted = self._apply(s, plan, rules, now)
        self.last_plan = plan
        if (created or deleted) and self.jobs is not None:
            self.jobs.wake()
        return plan

    def preview(self, extra=()):
        """What a pass would do now, doing none of it: (rules, hosts, plan), from the same
        observation and the same `_decide` as reconcile(). `extra`: recruiters not stored (a
        dry run), planned among the others. The database is only read (not even a registered
        host is marked running), and the providers (catalog, quotas) are asked after that
        read transaction has ended."""
        now, rules, hosts, _, offers, unsent = self._look(extra)
        offers += self._missing_offers(offers, rules, store=False)
        return rules, hosts, self._decide(rules, hosts, offers, self._quota_room(rules, unsent), now)

    def _look(self, extra=()):
        """What a pass decides on, read in one transaction: (now, rules, hosts, ids of the
        hosts deploying whose worker registered, the catalog's offers of the providers wanted,
        our orders each region's quota may not count yet)."""
        with self.db.read() as s:
            now = self.clock()
            rules, hosts, registered = self._observe(s, now, extra)
            return now, rules, hosts, registered, _catalog_offers(s, _wanted(rules)), _unsent(s, rules)

    def _decide(self, rules, hosts, offers, quotas, now):
        """The policy's plan on what was observed: what a pass carries out, and a preview shows."""
        unhealthy = {k: self.refused.get(k) for k, until in list(self.unhealthy.items()) if until > now}
        return policy.plan(rules, hosts, offers, unhealthy=unhealthy, quotas=quotas,
                           deploy_timeout=self.deploy_timeout, horizon=2 * self.tick + 60)

    # -- what is -------------------------------------------------------------------

    def _observe(self, s, now, extra=()):
        """(rules, hosts, ids of the hosts deploying whose worker registered): reads only."""
        stored = s.scalars(select(Recruiter).order_by(Recruiter.rank, Recruiter.id)).all()
        recruiters = [*stored, *extra]
        batch_ids = {r.batch_id for r in recruiters} - {None}
        live = s.execute(
            select(Instance.id, Instance.recruiter_id, Instance.batch_id, Instance.provider,
                   Instance.region, Instance.flavor, Instance.status, Instance.created_at,
                   Instance.hourly_cost, Worker.status, Worker.idle_since, Worker.batch_id, Instance.ip)
            .outerjoin(Worker, Worker.name == Instance.name)
            .where(Instance.status.in_(LIVE_HOSTS))).all()
        failed = self._failed_deploys(s, live)
        batch_ids |= {row[11] for row in live if row[11] is not None}
        remaining, work = {}, set()
        if batch_ids:
            # A paused batch wants no host: its tasks are not work until it is resumed.
            active = select(Batch.id).where(Batch.status == BatchStatus.ACTIVE.value)
            for bid, status, n in s.execute(
                    select(Task.batch_id, Task.status, func.count())
                    .where(Task.batch_id.in_(batch_ids), Task.status.in_(REMAINING),
                           Task.batch_id.in_(active))
                    .group_by(Task.batch_id, Task.status)):
                remaining[bid] = remaining.get(bid, 0) + n
                if status in WORK:
                    work.add(bid)
        spent = {rid: c["spent"] for rid, c in cost_of(s, [r.id for r in stored], now=now).items()}
        rules = [policy.Rule(
            id=r.id, batch_id=r.batch_id, provider=r.provider, max_workers=r.max_workers,
            tasks_per_worker=r.tasks_per_worker, remaining=remaining.get(r.batch_id, 0),
            rank=r.rank, regions=tuple(r.regions) if r.regions else None, flavor=r.flavor,
            min_cpu=r.min_cpu, min_ram=r.min_ram, min_disk=r.min_disk, gpu=r.gpu, spot=r.spot,
            idle_timeout=r.idle_timeout, deploy_timeout=r.deploy_timeout,
            max_hourly_cost=r.max_hourly_cost, budget=r.budget,
            spent=spent.get(r.id, 0.0)) for r in recruiters]
        catalog = self._catalog(s, {(row[3], row[4], row[5]) for row in live})
        hosts, registered = [], []
        for (iid, rid, ibatch, provider, region, flavor, status, created, hourly,
             wstatus, idle_since, wbatch, _ip) in live:
            if wstatus is not None and status == HostStatus.DEPLOYING.value:
                status = HostStatus.RUNNING.value             # its worker registered
                registered.append(iid)
            idle = None
            if wstatus == WorkerStatus.RUNNING.value and idle_since is not None:
                idle = max((now - idle_since).total_seconds(), 0.0)
            hosts.append(policy.Host(
                id=iid, recruiter_id=rid, provider=provider, region=region, flavor=flavor,
                status=status, age=(now - created).total_seconds(), hourly_cost=hourly or 0.0,
                worker=wstatus, idle_for=idle,
                has_work=(wbatch if wbatch is not None else ibatch) in work,
                offer=catalog.get((provider, region, flavor)), deploy_failed=iid in failed))
        return rules, hosts, registered

    def _mark_running(self, s, registered, now):
        if registered:
            s.execute(update(Instance).where(Instance.id.in_(registered))
                      .values(status=HostStatus.RUNNING.value)
                      .execution_options(synchronize_session=False))
            _events(s, "instance.running", registered, now)

    def _failed_deploys(self, s, live):
        """Ids of the live hosts without a worker whose deploy job failed for good: one made
        for their address since they were ordered (addresses are reused)."""
        by_ip = {}
        for row in live:
            if row[9] is None and row[12]:
                by_ip.setdefault(row[12], []).append((row[0], row[7]))
        if not by_ip:
            return set()
        out = set()
        for target, made in s.execute(select(Job.target, Job.created_at).where(
                Job.kind == "deploy", Job.status == JobStatus.FAILED.value, Job.target.in_(list(by_ip)))):
            out |= {iid for iid, ordered in by_ip[target] if made > ordered}
        return out

    def _catalog(self, s, keys):
        if not keys:
            return {}
        providers = {p for p, _, _ in keys}
        rows = s.scalars(select(Flavor).where(Flavor.provider.in_(providers))).all()
        return {(f.provider, f.region, f.name): _offer(f) for f in rows
                if (f.provider, f.region, f.name) in keys}

    def _missing_offers(self, offers, rules, store):
        """The offers of the providers wanted whose catalog is empty, asked of them outside any
        transaction; a pass (`store`) keeps them in the catalog, a preview does not (and lets
        a provider's error through: it is the answer)."""
        out = []
        for name in sorted(_wanted(rules) - {o.provider for o in offers}):
            if not store:
                out += [_offer(f) for f in self.providers.catalog(name)[1]]
                continue
            try:
                self.providers.refresh_catalog(self.db, name)
            except ScitqError as err:
                log.warning("recruitment: cannot read %s's flavors: %s", name, err)
                continue
            with self.db.read() as s:
                out += _catalog_offers(s, {name})
        return out

    def _quota_room(self, rules, unsent):
        """{(provider, region): instances that may still be made}: the provider's instance
        quota, less our orders it may not count yet (`unsent`, from _unsent). Asked of the
        providers only when something is wanted."""
        out = {}
        for provider in _wanted(rules):
            try:
                p = self.providers.get(provider)
                regions = {x for r in rules if r.provider == provider for x in (r.regions or ())} \
                    or set(p.regions())
            except ScitqError:
                continue
            for region in regions:
                room = _instances_room(p, region)
                if room is not None:
                    out[(provider, region)] = max(room - unsent.get((provider, region), 0), 0)
        return out

    # -- what to do -----------------------------------------------------------------

    def _apply(self, s, plan, rules, now):
        by_rule = {r.id: r for r in rules}
        created, deleted = [], []
        recruiters = {r.id: r for r in s.scalars(select(Recruiter).where(
            Recruiter.id.in_([rid for rid, _ in plan.create] + [rid for _, rid in plan.reuse])))}
        for iid, rid in plan.reuse:
            self._reuse(s, s.get(Instance, iid), recruiters[rid])
        if plan.create:
            rows = [{"name": f"scitq-{offer.provider}-{secrets.token_hex(4)}",
                     "recruiter_id": rid, "batch_id": by_rule[rid].batch_id,
                     "provider": offer.provider, "region": offer.region, "flavor": offer.name,
                     "spot": offer.spot, "hourly_cost": offer.hourly_cost,
                     "status": HostStatus.CREATING.value, "created_at": now}
                    for rid, offer in plan.create]
            s.connection().execute(Instance.__table__.insert(), rows)   # executemany, no RETURNING
            ids = dict(s.execute(select(Instance.name, Instance.id).where(
                Instance.name.in_([r["name"] for r in rows]))).all())
            created = [ids[r["name"]] for r in rows]
            _events(s, "instance.ordered", created, now)
            self._jobs(s, "create", created, now)
        if plan.delete:
            self._retire(s, dict(plan.delete), now)
            deleted = [iid for iid, _ in plan.delete]
        if deleted:
            self._jobs(s, "delete", deleted, now)
        return created, deleted

    def _jobs(self, s, kind, instance_ids, now):
        names = dict(s.execute(select(Instance.id, Instance.name).where(Instance.id.in_(instance_ids))).all())
        s.execute(insert(Job), [{"kind": kind, "target": names[i], "status": JobStatus.PENDING.value,
                                 "params": {"instance_id": i}, "attempts": 0,
                                 "max_attempts": 1 if kind == "create" else 5,
                                 "created_at": now, "next_try_at": now} for i in instance_ids])

    def _reuse(self, s, inst, recruiter):
        worker = s.scalar(select(Worker).where(Worker.name == inst.name))
        inst.recruiter_id, inst.batch_id = recruiter.id, recruiter.batch_id
        worker.batch_id = recruiter.batch_id
        worker.concurrency, worker.prefetch = recruiter.concurrency, recruiter.prefetch
        worker_calls.remember(worker, {"batch": recruiter.batch.name, "concurrency": recruiter.concurrency,
                                  "prefetch": recruiter.prefetch})
        record(s, "instance.reused", inst, recruiter_id=recruiter.id, batch_id=recruiter.batch_id)
        if self.notifier is not None:
            self.notifier.notify(worker.id)

    def _retire(self, s, reasons, now):
        """Hosts go ({instance id: reason}): their workers' tasks back to the queue (no retry
        spent), the workers offline, the instances deleting. A few statements for any number."""
        insts = s.scalars(select(Instance).where(Instance.id.in_(reasons))).all()
        for inst in insts:
            inst.status = HostStatus.DELETING.value
            inst.error = reasons[inst.id][:1024]
            log.info("recruitment: deleting %s (%s)", inst.name, reasons[inst.id])
        _events(s, "instance.deleting", list(reasons), now, reasons)
        workers = dict(s.execute(select(Worker.name, Worker.id).where(
            Worker.name.in_([i.name for i in insts]))).all())
        busy = set(s.scalars(select(Execution.worker_id).distinct().where(
            Execution.worker_id.in_(workers.values()), Execution.status.in_(ACTIVE)))) if workers else ()
        for inst in insts:
            if workers.get(inst.name) in busy:
                give_back(s, workers[inst.name], f"its host is deleted: {reasons[inst.id]}")
        if workers:
            s.execute(update(Worker).where(Worker.id.in_(workers.values()),
                                           Worker.status.not_in([WorkerStatus.OFFLINE.value,
                                                                 WorkerStatus.LOST.value]))
                      .values(status=WorkerStatus.OFFLINE.value)
                      .execution_options(synchronize_session=False))
            if self.notifier is not None:
                self.notifier.notify(*workers.values())

    # -- jobs: the slow parts, off the loop's thread ------------------------------------

    def handlers(self):
        def run(action):
            def handler(job, log_line):
                with reporting(log_line):        # a provider's waits show in the job's progress
                    return action(job["params"]["instance_id"], log_line)
            return handler
        return {"create": run(self.create_host), "delete": run(self.delete_host)}

    def _delete_later(self, s, instance_ids):
        """Delete jobs for hosts already deleting."""
        if instance_ids:
            self._jobs(s, "delete", instance_ids, self.clock())

    def create_host(self, instance_id, log_line=log.info):
        """Rent the host (or adopt it, when an earlier attempt made it), then queue its deploy."""
        from scitq.server.sshkey import ensure_keypair
        with self.db.read() as s:
            inst = s.get(Instance, instance_id)
            recruiter = s.get(Recruiter, inst.recruiter_id) if inst.recruiter_id else None
            if inst.status != HostStatus.CREATING.value:
                log_line(f"{inst.name} is {inst.status}: nothing to create")
                return
            spec_args = {"name": inst.name, "flavor": inst.flavor, "region": inst.region,
                         "spot": inst.spot, "tags": {RECRUITED: str(inst.id)}}
            provider_name = inst.provider
            settings = {"concurrency": recruiter.concurrency if recruiter else 1,
                        "prefetch": recruiter.prefetch if recruiter else None,
                        "batch": recruiter.batch.name if recruiter else None}
        provider = self.providers.get(provider_name)
        try:
            # leftovers of a VM that is gone (DELETED) are not a host to adopt
            made = [h for h in provider.list({TAG: spec_args["name"]}) if h.status is not InstanceStatus.DELETED]
            if made:
                host = made[0]
                log_line(f"{host.name} exists already (an earlier attempt made it): adopted")
            else:
                _, public_key = ensure_keypair(self.providers.data_dir)
                log_line(f"creating {spec_args['name']}: {provider_name} {spec_args['flavor']} "
                         f"in {spec_args['region']}")
                host = provider.create(InstanceSpec(ssh_public_key=public_key, **spec_args))
        except ProviderError as err:
            with self.db.write() as s:
                inst = s.get(Instance, instance_id)
                if err.leftovers:     # still billed: deleting, its cost running until they are gone
                    inst.status = HostStatus.DELETING.value
                    inst.error = f"{err.message} (left: {', '.join(err.leftovers)})"[:1024]
                    record(s, "instance.deleting", inst, error=err.message, leftovers=list(err.leftovers))
                    self._delete_later(s, [instance_id])
                else:
                    inst.status, inst.error = HostStatus.FAILED.value, err.message[:1024]
                    inst.deleted_at, inst.cost = self.clock(), 0.0
                    record(s, "instance.failed", inst, error=err.message)
            key = (provider_name, spec_args["region"], spec_args["flavor"])
            self.unhealthy[key] = self.clock() + timedelta(seconds=self.backoff)
            self.refused[key] = err.message
            log_line(f"{provider_name} refused: {err.message}; {key[1]}/{key[2]} left alone for "
                     f"{self.backoff:g}s")
            self.wake()
            raise
        with self.db.write() as s:
            inst = s.get(Instance, instance_id)
            inst.provider_id, inst.ip = host.id, host.ip
            if inst.status != HostStatus.CREATING.value:     # deleted while it was being made
                log_line(f"{inst.name} was {inst.status} meanwhile: deleting it")
                deleting = True
            else:
                deleting = False
                inst.status = HostStatus.DEPLOYING.value
                record(s, "instance.created", inst, ip=host.ip, provider_id=host.id)
                url = self.server_url(provider_name) if self.server_url else None
                if not url:
                    raise ScitqError("the hosts cannot be told where this server is: start it "
                                     "with --public-url")
                s.add(Job(kind="deploy", target=host.ip, status=JobStatus.PENDING.value,
                          max_attempts=3, params={
                              "engine": self.deploy_engine, "user": host.user or "root",
                              "port": 22, "server_url": url.rstrip("/"), "name": inst.name,
                              **settings}))
        if deleting:
            provider.delete(host.id)
            return
        log_line(f"{spec_args['name']} is up at {host.ip}; deploy queued")
        if self.jobs is not None:
            self.jobs.wake()

    def delete_host(self, instance_id, log_line=log.info):
        with self.db.read() as s:
            inst = s.get(Instance, instance_id)
            provider_name, provider_id, name = inst.provider, inst.provider_id, inst.name
        provider = self.providers.get(provider_name)
        if provider_id is None:       # its create may have got as far as the provider
            provider_id = next((h.id for h in provider.list({TAG: name})), None)
        if provider_id is not None:
            try:
                provider.delete(provider_id)
            except ProviderError as err:   # it stays deleting, its cost running: tried again
                log_line(f"{name}: {err.message}; it stays deleting until {provider_name} says it is gone")
                raise
        self._close(instance_id, None)
        log_line(f"{name} deleted")

    def _close(self, instance_id, error):
        with self.db.write() as s:
            inst = s.get(Instance, instance_id)
            if inst.status == HostStatus.DELETED.value:
                return
            now = self.clock()
            inst.status, inst.deleted_at = HostStatus.DELETED.value, now
            inst.cost = inst.cost_so_far(now)
            if error:
                inst.error = error[:1024]
            record(s, "instance.deleted", inst, cost=inst.cost, error=error)
            tokens.revoke_host_tokens(s, inst.name)     # no one may register as its worker now

    # -- what the providers say --------------------------------------------------------

    def sweep_providers(self):
        """Evictions (hosts of ours the provider lost) and orphans (hosts of a recruiter the
        database does not know, or gave up on). One server process sweeps at a time: another
        one sweeping now leaves nothing to do."""
        with self.db.once("provider_sweep", wait=False) as mine:
            if mine:
                self._sweep_providers()

    def _sweep_providers(self):
        with self.db.read() as s:
            used = set(s.scalars(select(Instance.provider).distinct()))
        now = self.clock()
        for name in sorted(used):
            try:
                provider = self.providers.get(name)
                if not provider.rents_hosts:      # a lab's own hosts: never deleted
                    continue
                there = provider.list({RECRUITED: None})
            except (ScitqError, NotImplementedError) as err:
                log.warning("recruitment: cannot list %s's hosts: %s", name, err)
                continue
            self._sweep(name, there, now)

    def _sweep(self, provider_name, there, now):
        by_name = {h.tags.get(TAG) or h.name: h for h in there}
        evicted = []
        with self.db.write() as s:
            rows = {i.name: i for i in s.scalars(select(Instance).where(
                Instance.provider == provider_name, Instance.name.in_(by_name)))}
            for inst in s.scalars(select(Instance).where(
                    Instance.provider == provider_name,
                    Instance.status.in_([HostStatus.DEPLOYING.value, HostStatus.RUNNING.value]))):
                host = by_name.get(inst.name)
                if host is None or host.status in (InstanceStatus.DELETED, InstanceStatus.FAILED):
                    evicted.append(inst.id)
            if evicted:
                self._retire(s, {i: "gone from the provider (a spot eviction?)" for i in evicted}, now)
            gone = self._sweep_deleting(s, provider_name, by_name, evicted)
        for iid in gone:
            self._close(iid, None)
        provider = self.providers.get(provider_name)
        for name, host in by_name.items():
            inst = rows.get(name)
            if inst is not None and inst.status not in (HostStatus.DELETED.value, HostStatus.FAILED.value):
                self._seen_orphans.pop((provider_name, host.id), None)
                continue
            first = self._seen_orphans.setdefault((provider_name, host.id), now)
            if (now - first).total_seconds() >= self.orphan_grace:
                log.warning("recruitment: deleting orphan %s %s (unknown to the database for %.0fs)",
                            provider_name, host.id, (now - first).total_seconds())
                try:
                    provider.delete(host.id)
                except ProviderError as err:
                    log.warning("recruitment: cannot delete orphan %s: %s", host.id, err)
                    continue
                self._seen_orphans.pop((provider_name, host.id), None)
                with self.db.write() as s:
                    add_events(s, [event_row("instance.orphan_deleted", "instance", None,
                                             {"provider": provider_name, "provider_id": host.id,
                                              "name": host.name})])
        if evicted:
            self.wake()

    def _sweep_deleting(self, s, provider_name, by_name, evicted):
        """Hosts deleting: those the provider no longer lists are returned (to close); the others
        (and the evicted) get a delete job unless one is under way."""
        deleting = s.execute(select(Instance.id, Instance.name).where(
            Instance.provider == provider_name, Instance.status == HostStatus.DELETING.value)).all()
        busy = set(s.scalars(select(Job.target).where(
            Job.kind == "delete", Job.status.in_([JobStatus.PENDING.value, JobStatus.RUNNING.value]),
            Job.target.in_([name for _, name in deleting])))) if deleting else set()
        gone = [iid for iid, name in deleting if name not in by_name and iid not in evicted]
        again = [iid for iid, name in deleting if name not in busy and iid not in gone]
        self._delete_later(s, again)
        return gone


def _events(s, kind, instance_ids, now, details=None):
    if instance_ids:
        # Not the ORM's bulk path: it costs ~0.1 ms a row, too much at 1,000 hosts.
        add_events(s, [event_row(kind, "instance", i, {"reason": details[i]} if details else None, now)
                       for i in instance_ids])


def _wanted(rules):
    """The providers some recruiter wants hosts of now."""
    return {r.provider for r in rules if policy.want(r) > 0}


def _catalog_offers(s, providers):
    if not providers:
        return []
    return [_offer(f) for f in s.scalars(select(Flavor).where(Flavor.provider.in_(providers)))]


def _unsent(s, rules):
    """{(provider, region): our orders the provider has no id for yet}: its quota may not count
    them yet."""
    wanted = _wanted(rules)
    if not wanted:
        return {}
    return {(p, region): n for p, region, n in s.execute(
        select(Instance.provider, Instance.region, func.count()).where(
            Instance.provider.in_(wanted), Instance.status == HostStatus.CREATING.value,
            Instance.provider_id.is_(None)).group_by(Instance.provider, Instance.region))}


def _offer(f):
    return policy.Offer(provider=f.provider, region=f.region, name=f.name, cpu=f.cpu, ram=f.ram,
                        disk=f.disk, gpu=f.gpu, hourly_cost=f.hourly_cost, spot=f.spot)


def _instances_room(provider, region):
    """Instances the provider still lets us make in a region (None: no limit known)."""
    try:
        quotas = provider.quotas(region)
    except (ScitqError, NotImplementedError):
        return None
    for q in quotas:
        if q.resource == "instances" and q.limit is not None:
            return max(int(q.limit - q.used), 0)
    return None
