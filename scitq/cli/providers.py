"""scitq provider list|regions|refresh|flavors|quotas|instances|create|delete"""
import click

from scitq.cli import cli
from scitq.cli.render import json_option, print_json, table

INSTANCE_COLUMNS = [("id", "id"), ("name", "name"), ("region", "region"), ("flavor", "flavor"),
                    ("status", "status"), ("ip", "ip"), ("user", "user")]


@cli.group()
def provider():
    """Clouds and machines hosts come from (through the server, which holds the credentials)."""


@provider.command("list")
@json_option
@click.pass_obj
def provider_list(ctx, as_json):
    """Known providers: configured on the server or not, and why one cannot work."""
    out = ctx.client.providers()
    if as_json:
        return print_json(out)
    table(out, [("provider", "name"), ("configured", lambda p: "yes" if p["configured"] else "no"),
                ("problem", "error")])


@provider.command("regions")
@click.argument("name")
@json_option
@click.pass_obj
def provider_regions(ctx, name, as_json):
    """The regions the provider NAME offers."""
    regions = ctx.client.regions(name)
    print_json(regions) if as_json else click.echo("\n".join(regions))


@provider.command("refresh")
@click.argument("name")
@click.pass_obj
def provider_refresh(ctx, name):
    """Read the provider's flavors and prices into the server's catalog."""
    out = ctx.client.refresh_flavors(name)
    click.echo(f"{name}: {out['flavors']} flavor(s) in the catalog")


@provider.command("flavors")
@click.argument("name", required=False)
@click.option("--region", "-r")
@click.option("--min-cpu", type=click.IntRange(0))
@click.option("--min-ram", type=click.FloatRange(0), help="GiB")
@click.option("--min-disk", type=click.FloatRange(0), help="GiB")
@click.option("--gpu/--no-gpu", default=None, help="Only flavors with (or without) a GPU.")
@click.option("--max-cost", type=click.FloatRange(0), help="Highest hourly price.")
@click.option("--spot/--on-demand", default=None)
@click.option("--refresh", is_flag=True, help="Refresh the catalog from the provider first.")
@json_option
@click.pass_obj
def provider_flavors(ctx, name, region, min_cpu, min_ram, min_disk, gpu, max_cost, spot, refresh, as_json):
    """Flavors that fit, cheapest first, from the catalog (of one provider, or all)."""
    if refresh and not name:
        raise click.UsageError("--refresh needs a provider NAME")
    if name and (refresh or not ctx.client.flavors(provider=name, limit=1)):
        ctx.client.refresh_flavors(name)      # an empty catalog is filled on first look
    out = ctx.client.flavors(provider=name, region=region, min_cpu=min_cpu, min_ram=min_ram,
                             min_disk=min_disk, gpu=gpu, max_cost=max_cost, spot=spot)
    if as_json:
        return print_json(out)
    if not out and name:
        click.echo(f"no flavor fits (run `scitq provider refresh {name}` if the catalog is empty)",
                   err=True)
    table(out, [("provider", "provider"), ("region", "region"), ("flavor", "name"), ("cpu", "cpu"),
                ("ram GiB", "ram"), ("disk GiB", "disk"), ("gpu", "gpu"),
                ("per hour", lambda f: "-" if f["hourly_cost"] is None else f"{f['hourly_cost']:.4f}"),
                ("spot", lambda f: "yes" if f["spot"] else "")])


@provider.command("quotas")
@click.argument("name")
@click.option("--region", "-r", required=True)
@json_option
@click.pass_obj
def provider_quotas(ctx, name, region, as_json):
    """What the account may still rent at provider NAME: used and limit per resource."""
    out = ctx.client.quotas(name, region)
    if as_json:
        return print_json(out)
    table(out, [("region", "region"), ("resource", "resource"), ("used", "used"), ("limit", "limit")])


@provider.command("instances")
@click.argument("name")
@json_option
@click.pass_obj
def provider_instances(ctx, name, as_json):
    """The provider's scitq-tagged hosts, as the provider sees them."""
    out = ctx.client.instances(name)
    if as_json:
        return print_json(out)
    table(out, INSTANCE_COLUMNS)


@provider.command("create")
@click.argument("name")
@click.option("--flavor", "-f", required=True)
@click.option("--region", "-r", required=True)
@click.option("--count", "-n", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--spot", is_flag=True, help="A spot/preemptible host, where the provider has them.")
@click.option("--max-price", type=float, help="Spot: the highest hourly price, in US dollars above 0 "
              "(Azure's unit whatever the billing currency), or -1 for up to the on-demand price.")
@json_option
@click.pass_obj
def provider_create(ctx, name, flavor, region, count, spot, max_price, as_json):
    """Create hosts and wait until they run (this can take minutes on a cloud)."""
    out = ctx.client.create_instances(name, flavor, region, count, spot, max_price)
    if as_json:
        return print_json(out)
    table(out, INSTANCE_COLUMNS)


@provider.command("delete")
@click.argument("name")
@click.argument("instance_ids", nargs=-1, required=True)
@click.pass_obj
def provider_delete(ctx, name, instance_ids):
    """Delete hosts (static ones are released, not deleted)."""
    for iid in instance_ids:
        ctx.client.delete_instance(name, iid)
        click.echo(f"{name} {iid}: deleted")
