"""What recruitment would do now for a batch, and why: `scitq recruiter plan BATCH` and
`scitq recruiter add ... --dry-run`.

The decision is the reconciler's own (`Reconciler.preview`: a pass's observation and
`_decide`, read-only); this module only words it for people: one row per choice (rent, reuse,
delete, or a fitting offer ruled out with its reason), priced, and with the time the batch's
remaining tasks take at its measured rate (the dashboard's throughput and ETA). With no
measured rate yet that time, and so the expected cost, is unknown: never guessed.
"""
from collections import Counter

from sqlalchemy import select

from scitq.errors import NotFound
from scitq.server.recruit import policy
from scitq.server import task_store
from scitq.server.models import MAX_ID, Batch, Recruiter
from scitq.server.ui.dashboard import WINDOW, eta, throughputs
from scitq.status import BatchStatus

# A would-be recruiter's id in the plan: above every stored one, as a new recruiter's would be
# (rank ties are broken by id).
DRY_RUN_ID = MAX_ID + 1


def batch_plan(reconciler, ref):
    """The plan of the recruiters of a batch (404 when it has none)."""
    with reconciler.db.read() as s:
        batch = task_store.get_batch(s, ref)
        mine = {r.id: r.concurrency for r in s.scalars(
            select(Recruiter).where(Recruiter.batch_id == batch.id))}
        name, batch_id = batch.name, batch.id
    if not mine:
        raise NotFound(f"batch {name} has no recruiter: `scitq recruiter add {name} ... --dry-run` "
                       "shows what one would rent")
    return _describe(reconciler, name, batch_id, mine, reconciler.preview())


def dry_run(reconciler, fields):
    """The plan of a recruiter of these fields (as recruiters.check_recruiter gives them), planned
    among the stored ones; nothing is stored (not even its batch) and nothing rented."""
    fields = dict(fields)
    name = fields.pop("batch")
    with reconciler.db.read() as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.name == name))
    # Never added to a session: only its fields are read.
    would_be = Recruiter(id=DRY_RUN_ID, batch_id=batch_id, **fields)
    plan = reconciler.preview(extra=[would_be])
    return _describe(reconciler, name, batch_id, {DRY_RUN_ID: would_be.concurrency}, plan)


def _describe(reconciler, name, batch_id, concurrency, preview):
    """`concurrency`: {rule id: tasks each of its hosts runs at once}, the rules shown."""
    all_rules, hosts, plan = preview
    with reconciler.db.read() as s:
        now = reconciler.clock()
        counts = task_store.batch_counts(s, [batch_id]).get(batch_id) if batch_id else None
        counts = counts or task_store.summarize({})
        status = s.scalar(select(Batch.status).where(Batch.id == batch_id)) if batch_id else None
        rate = throughputs(s, now).get(batch_id) if batch_id else None
    drain = eta(counts, rate, status)
    rows = _rows(plan, hosts, set(concurrency), drain)
    shown = [r for r in all_rules if r.id in concurrency]
    live = Counter(h.recruiter_id for h in hosts)
    recruiters = [{"id": _shown_id(r.id), "want": policy.want(r), "live": live[r.id],
                   "concurrency": concurrency[r.id]} for r in shown]
    slots = sum(row["count"] * concurrency.get(row["recruiter"] or DRY_RUN_ID, 1)
                for row in rows if row["action"] in ("rent", "reuse"))
    return {"batch": name, "remaining": counts["remaining"], "rate": rate or None,
            "drain": drain, "note": _note(counts["remaining"], rate, drain, status, slots),
            "recruiters": recruiters, "rows": rows}


def _shown_id(rule_id):
    return None if rule_id == DRY_RUN_ID else rule_id


def _note(remaining, rate, drain, status, slots):
    if not remaining:
        return "no task remains: nothing to rent"
    if drain is not None:
        return (f"{remaining} task(s) remain; at the rate measured over the last {WINDOW / 60:g} "
                f"minutes ({rate:g} a minute) they take {drain:.0f}s")
    if status == BatchStatus.PAUSED.value:
        return f"{remaining} task(s) remain but the batch is paused: nothing is rented until it resumes"
    return (f"no measured rate yet: {remaining} task(s) remain; the hosts above run {slots} at "
            "once, for a time (and so a cost) not known until tasks end")


def _rows(plan, hosts, shown, drain):
    """The plan's choices for the rules in `shown`, in the order it made them."""
    by_id = {h.id: h for h in hosts}
    rows = []
    rented = Counter((rid, offer) for rid, offer in plan.create if rid in shown)
    firsts = set()
    for (rid, offer), n in rented.items():
        why = "the next cheapest that fits" if rid in firsts else "the cheapest that fits"
        firsts.add(rid)
        rows.append(_row(rid, "rent", offer.key, n, offer.hourly_cost, drain, why))
    reused = Counter((rid, by_id[hid].provider, by_id[hid].region, by_id[hid].flavor,
                      by_id[hid].hourly_cost) for hid, rid in plan.reuse if rid in shown)
    for (rid, *key, hourly), n in reused.items():
        rows.append(_row(rid, "reuse", key, n, hourly, drain, "an idle host of a drained batch"))
    for hid, why in plan.delete:
        h = by_id[hid]
        if h.recruiter_id in shown:
            rows.append(_row(h.recruiter_id, "delete", (h.provider, h.region, h.flavor), 1,
                             h.hourly_cost, None, why))
    for rid, offer, why in plan.ruled_out:
        if rid in shown:
            rows.append(_row(rid, "ruled out", offer.key, None, offer.hourly_cost, None, why))
    return rows


def _row(rule_id, action, key, count, hourly, drain, why):
    provider, region, flavor = key
    cost = None
    if action in ("rent", "reuse") and drain is not None and hourly is not None:
        cost = round(count * hourly * drain / 3600, 4)
    return {"recruiter": _shown_id(rule_id), "action": action, "provider": provider,
            "region": region, "flavor": flavor, "count": count, "hourly_cost": hourly,
            "cost": cost, "drain": drain if action in ("rent", "reuse") else None, "why": why}
