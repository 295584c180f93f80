"""The ledger of rented hosts: the `instance` rows (every host scitq rented) and what they cost.

Pure database logic (no Flask), read by the API, the dashboard, the metrics and the rollups; the
reconciler writes the rows as it rents and releases hosts.
"""
from sqlalchemy import case, func, select

from scitq.errors import BadRequest
from scitq.server import task_store
from scitq.server.models import Instance, accrued, utcnow
from scitq.status import LIVE_HOSTS, HostStatus

INSTANCE_STATUSES = [s.value for s in HostStatus]
# Rows still paid for: live ones, and those whose deletion is under way (the cloud bills
# until the host is gone; their cost is closed when it is).
ACCRUING = LIVE_HOSTS + (HostStatus.DELETING.value,)


def no_cost():
    """What a recruiter or a batch without a host has cost: nothing."""
    return {"spent": 0.0, "hourly": 0.0, "hosts": 0}


def cost_of(s, recruiter_ids=None, batch_ids=None, now=None):
    """{id: {"spent", "hourly", "hosts"}} of recruiters, or of batches when batch_ids is
    given (ids asked for get zeros when they have no host; with neither, every recruiter).

    spent: closed costs plus what unclosed hosts cost so far; hourly and hosts: what live
    hosts cost per hour now, and how many there are. Closed costs, counts and hourly rates
    are SQL aggregates; only the unclosed rows (a few thousand at most) come back to be
    summed here, since elapsed seconds are computed differently by SQLite and PostgreSQL."""
    by_batch = batch_ids is not None
    key = Instance.batch_id if by_batch else Instance.recruiter_id
    ids = batch_ids if by_batch else recruiter_ids
    if ids is not None:
        ids = list(ids)
        if not ids:
            return {}
    where = [key.is_not(None)]
    if recruiter_ids is not None:
        where.append(Instance.recruiter_id.in_(recruiter_ids))
    if batch_ids is not None:
        where.append(Instance.batch_id.in_(batch_ids))
    out = {i: no_cost() for i in ids or ()}

    live = Instance.status.in_(LIVE_HOSTS)
    totals = select(key, func.sum(Instance.cost), func.sum(case((live, 1), else_=0)),
                    func.sum(case((live, Instance.hourly_cost), else_=None)))
    for k, closed, hosts, hourly in s.execute(totals.where(*where).group_by(key)):
        out[k] = {"spent": float(closed or 0.0), "hourly": float(hourly or 0.0),
                  "hosts": int(hosts or 0)}

    now = now or utcnow()
    unclosed = select(key, Instance.hourly_cost, Instance.created_at, Instance.deleted_at).where(
        *where, Instance.cost.is_(None), Instance.hourly_cost.is_not(None),
        Instance.status.in_(ACCRUING))
    for k, hourly_cost, created_at, deleted_at in s.execute(unclosed):
        out[k]["spent"] += accrued(hourly_cost, created_at, deleted_at or now)
    for totals_ in out.values():
        totals_["spent"] = round(totals_["spent"], 6)
        totals_["hourly"] = round(totals_["hourly"], 6)
    return out


def batch_cost(s, ref, now=None):
    """What the hosts of a batch cost, whichever recruiter (even a deleted one) rented them."""
    b = task_store.get_batch(s, ref)
    return {"batch": b.name, **cost_of(s, batch_ids=[b.id], now=now)[b.id]}


def list_instances(s, status=None, provider=None, recruiter_id=None, batch=None, after=None,
                   limit=100):
    """A page of instances, newest first; `after` is the cursor (the last id of the previous
    page). status: a HostStatus value, or "live" for every host still billed (a host being
    deleted is billed until the cloud says it is gone: a user must see it)."""
    q = select(Instance).order_by(Instance.id.desc()).limit(limit)
    if status == "live":
        q = q.where(Instance.status.in_(ACCRUING))
    elif status is not None:
        if status not in INSTANCE_STATUSES:
            raise BadRequest(f"unknown instance status {str(status)[:40]!r}: one of "
                             f"{', '.join(INSTANCE_STATUSES)}, or live")
        q = q.where(Instance.status == status)
    if provider is not None:
        if "\x00" in provider:
            raise BadRequest("a provider name holds no NUL character")
        q = q.where(Instance.provider == provider)
    if recruiter_id is not None:
        q = q.where(Instance.recruiter_id == recruiter_id)
    if batch is not None:
        q = q.where(Instance.batch_id == task_store.get_batch(s, batch).id)
    if after is not None:
        q = q.where(Instance.id < after)
    rows = s.scalars(q).all()
    return rows, (rows[-1].id if len(rows) == limit else None)


def instance_dict(i, now=None):
    """The row, its cost so far, and its age in seconds (since it was asked for)."""
    now = now or utcnow()
    return {**i.to_dict(now), "age": round(max((now - i.created_at).total_seconds(), 0), 3)}

