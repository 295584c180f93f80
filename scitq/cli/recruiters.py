"""scitq recruiter add|list|show|delete|cost|plan and scitq instance list|show: the rules that
rent hosts for a batch, what they would rent now and why, and the hosts rented with what they
cost."""
import click

from scitq.cli import cli
from scitq.cli.options import PREFETCH, PREFETCH_HELP, prefetch_value
from scitq.cli.render import json_option, print_json, table

UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
HOST_STATUSES = ["creating", "deploying", "running", "deleting", "deleted", "failed"]


def duration(seconds):
    """3600 -> '1h', 90 -> '1m30s': the units of render.ago, at most two of them."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    for n, (unit, size) in enumerate(UNITS):
        if seconds >= size or unit == "s":
            out = f"{seconds // size}{unit}"
            if unit != "s":
                next_unit, next_size = UNITS[n + 1]
                rest = seconds % size // next_size
                out += f"{rest}{next_unit}" if rest else ""
            return out


def deploy_timeout(r):
    """Its own deploy timeout, or 'server' when it takes the server's."""
    return "server" if r.get("deploy_timeout") is None else duration(r["deploy_timeout"])


def money(value):
    return "-" if value is None else f"{value:.2f}"


def hourly(value):
    """A price per hour: cents are too coarse for one host."""
    return "-" if value is None else f"{value:.4f}"


def wants(r):
    """The flavor asked for, or the minimums: 'cpu>=8 ram>=32G gpu'."""
    if r.get("flavor"):
        return r["flavor"]
    parts = [f"{label}>={r[key]:g}{unit}" for key, label, unit in
             (("min_cpu", "cpu", ""), ("min_ram", "ram", "G"), ("min_disk", "disk", "G"))
             if r.get(key) is not None]
    return " ".join(parts + (["gpu"] if r.get("gpu") else []))


RECRUITER_COLUMNS = [
    ("id", "id"), ("batch", "batch"), ("provider", "provider"), ("wants", wants),
    ("workers", lambda r: f"{r['cost']['hosts']}/{r['max_workers']}"),
    ("concurrency", "concurrency"), ("idle timeout", lambda r: duration(r["idle_timeout"])),
    ("deploy timeout", deploy_timeout),
    ("per hour", lambda r: money(r["cost"]["hourly"])), ("spent", lambda r: money(r["cost"]["spent"])),
    ("budget", lambda r: money(r["budget"])),
]
PLAN_COLUMNS = [
    ("recruiter", lambda r: "new" if r["recruiter"] is None else r["recruiter"]),
    ("action", "action"), ("provider", "provider"), ("region", "region"), ("flavor", "flavor"),
    ("count", "count"), ("per hour", lambda r: hourly(r["hourly_cost"])),
    ("cost", lambda r: money(r["cost"])), ("drain", lambda r: duration(r["drain"])), ("why", "why"),
]
INSTANCE_COLUMNS = [
    ("id", "id"), ("name", "name"), ("provider", "provider"), ("region", "region"),
    ("flavor", "flavor"), ("status", "status"), ("ip", "ip"), ("age", lambda i: duration(i["age"])),
    ("per hour", lambda i: money(i["hourly_cost"])), ("cost", lambda i: money(i["cost"])),
]


@cli.group()
def recruiter():
    """Rent hosts for a batch while it has tasks, within a number of hosts and a budget."""


@recruiter.command("add")
@click.argument("batch")
@click.option("--provider", "-p", required=True, help="A provider configured on the server.")
@click.option("--regions", help="Regions it may rent in, separated by commas (default: all).")
@click.option("--flavor", "-f", help="A flavor name (or give minimums).")
@click.option("--min-cpu", type=click.IntRange(1), help="Or: at least this many cores.")
@click.option("--min-ram", type=click.FloatRange(0, min_open=True), help="At least this much RAM, GiB.")
@click.option("--min-disk", type=click.FloatRange(0, min_open=True), help="At least this much disk, GiB.")
@click.option("--gpu", is_flag=True, default=None, help="With minimums: only flavors with a GPU.")
@click.option("--max-workers", "-n", type=click.IntRange(1, 10_000), required=True,
              help="Live hosts at most.")
@click.option("--tasks-per-worker", "-k", type=click.IntRange(1, 10 ** 9), required=True,
              help="One host per this many remaining tasks.")
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), required=True,
              help="Tasks each worker runs at once.")
@click.option("--prefetch", type=PREFETCH, help=PREFETCH_HELP)
@click.option("--idle-timeout", type=click.FloatRange(0), help="Seconds a host may run nothing "
              "before it is deleted (default 300).")
@click.option("--deploy-timeout", type=click.IntRange(1, 86400), help="Seconds from a host's "
              "order to its worker's registration, past which it is deleted (default: the "
              "server's).")
@click.option("--max-hourly-cost", type=click.FloatRange(0, min_open=True),
              help="At most this much an hour for all its live hosts together.")
@click.option("--budget", type=click.FloatRange(0, min_open=True),
              help="Its hosts never cost more than this in all (they go before it is reached).")
@click.option("--spot", is_flag=True, default=None, help="Rent spot (preemptible) hosts.")
@click.option("--rank", type=int, help="Lower ranks recruit first (default 0).")
@click.option("--dry-run", is_flag=True, help="Add nothing, rent nothing: show what it would "
              "rent now and why (as `recruiter plan`).")
@json_option
@click.pass_obj
def recruiter_add(ctx, batch, provider, regions, dry_run, as_json, **options):
    """Rent hosts for BATCH (created if missing). Prints the recruiter's id."""
    options["prefetch"] = prefetch_value(options["prefetch"])
    if regions is not None:
        options["regions"] = [r.strip() for r in regions.split(",") if r.strip()]
    if dry_run:
        return show_plan(ctx.client.plan_recruiter(batch, provider, **options), as_json)
    r = ctx.client.add_recruiter(batch, provider, **options)
    print_json(r) if as_json else click.echo(r["id"])


@recruiter.command("plan")
@click.argument("batch")
@json_option
@click.pass_obj
def recruiter_plan(ctx, batch, as_json):
    """What the recruiters of BATCH would do now and why: the hosts they would rent (provider,
    region, flavor, count, price, expected cost and time to drain the batch at its measured
    rate) and the offers ruled out (quota, budget, max hourly cost, unhealthy). Rents nothing."""
    show_plan(ctx.client.batch_plan(batch), as_json)


def show_plan(plan, as_json):
    if as_json:
        return print_json(plan)
    if plan["rows"]:
        table(plan["rows"], PLAN_COLUMNS)
    else:
        wanted = ", ".join(f"{'new' if r['id'] is None else r['id']}: {r['live']} live, wants "
                           f"{r['want']}" for r in plan["recruiters"])
        click.echo(f"nothing to do ({wanted})")
    click.echo(f"batch {plan['batch']}: {plan['note']}")


@recruiter.command("list")
@click.option("--batch", "-b", help="Batch id or name.")
@json_option
@click.pass_obj
def recruiter_list(ctx, batch, as_json):
    """Recruiters in the order they recruit, with their live hosts and what they cost."""
    out = ctx.client.recruiters(batch)
    if as_json:
        return print_json(out)
    table(out, RECRUITER_COLUMNS)


@recruiter.command("show")
@click.argument("recruiter_id", type=int)
@json_option
@click.pass_obj
def recruiter_show(ctx, recruiter_id, as_json):
    """A recruiter: what it rents for its batch, the hosts it holds and what they cost."""
    r = ctx.client.recruiter(recruiter_id)
    if as_json:
        return print_json(r)
    shown = {**r, "wants": wants(r), "regions": ", ".join(r["regions"] or ["all"]),
             "workers": f"{r['cost']['hosts']} live / {r['max_workers']} at most",
             "idle_timeout": duration(r["idle_timeout"]), "deploy_timeout": deploy_timeout(r),
             "per_hour": money(r["cost"]["hourly"]),
             "spent": money(r["cost"]["spent"]), "budget": money(r["budget"]),
             "max_hourly_cost": money(r["max_hourly_cost"]), "spot": "yes" if r["spot"] else "no"}
    for key in ("id", "batch", "provider", "regions", "wants", "spot", "workers",
                "tasks_per_worker", "concurrency", "prefetch", "idle_timeout", "deploy_timeout",
                "max_hourly_cost", "per_hour", "spent", "budget", "rank", "remaining", "created_at"):
        click.echo(f"{key:>16}: {shown[key]}")


@recruiter.command("delete")
@click.argument("recruiter_id", type=int)
@click.pass_obj
def recruiter_delete(ctx, recruiter_id):
    """Stop a recruiter renting; its live hosts keep serving until idle."""
    out = ctx.client.delete_recruiter(recruiter_id)
    click.echo(f"recruiter {recruiter_id}: deleted"
               + (f" ({out['live_hosts']} live host(s) keep serving)" if out["live_hosts"] else ""))


@recruiter.command("cost")
@click.argument("batch")
@json_option
@click.pass_obj
def recruiter_cost(ctx, batch, as_json):
    """What the hosts of BATCH cost: spent so far, per hour now, live hosts."""
    c = ctx.client.batch_cost(batch)
    if as_json:
        return print_json(c)
    click.echo(f"batch {c['batch']}: spent {money(c['spent'])}, {money(c['hourly'])} per hour "
               f"now, {c['hosts']} live host(s)")


@cli.group()
def instance():
    """Hosts the server rented, with what they cost (the cost ledger)."""


@instance.command("list")
@click.option("--status", "-s", type=click.Choice(HOST_STATUSES + ["live"]),
              help="Only hosts in this status (default: live ones).")
@click.option("--provider", "-p")
@click.option("--batch", "-b", help="Batch id or name.")
@click.option("--all", "every", is_flag=True, help="Every host, deleted and failed ones too.")
@json_option
@click.pass_obj
def instance_list(ctx, status, provider, batch, every, as_json):
    """Rented hosts, newest first: live ones unless --status or --all says otherwise."""
    if every and status:
        raise click.UsageError("give --status or --all, not both")
    if not every:
        status = status or "live"
    items = list(ctx.client.iter_instances(status=status, provider=provider, batch=batch))
    if as_json:
        return print_json(items)
    table(items, INSTANCE_COLUMNS)


@instance.command("show")
@click.argument("instance_id", type=int)
@json_option
@click.pass_obj
def instance_show(ctx, instance_id, as_json):
    """A rented host: its provider, flavor, state and cost."""
    i = ctx.client.instance(instance_id)
    if as_json:
        return print_json(i)
    table([i], INSTANCE_COLUMNS)
    if i.get("error"):
        click.echo(f"error: {i['error']}")
