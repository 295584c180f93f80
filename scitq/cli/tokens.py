"""scitq token create|list|revoke (admin)."""
import click

from scitq.cli import cli
from scitq.cli.render import json_option, print_json, table

ROLES = ["admin", "user", "worker"]


@cli.group()
def token():
    """API tokens and their roles (when the server has auth on)."""


@token.command("create")
@click.argument("name")
@click.option("--role", "-r", type=click.Choice(ROLES), default="user", show_default=True,
              help="admin: everything; user: all but tokens, hosts and deploys; worker: one "
                   "worker's own calls.")
@json_option
@click.pass_obj
def token_create(ctx, name, role, as_json):
    """Make a token and print it (once: only its hash is kept)."""
    t = ctx.client.create_token(name, role)
    if as_json:
        return print_json(t)
    click.echo(t["token"])
    click.echo(f"token {t['id']} ({t['name']}, {t['role']}): keep it, it is not shown again",
               err=True)


@token.command("list")
@click.option("--all", "every", is_flag=True, help="Revoked ones too.")
@json_option
@click.pass_obj
def token_list(ctx, every, as_json):
    """Tokens (their first characters, never the tokens)."""
    tokens = ctx.client.tokens(revoked=every)
    if as_json:
        return print_json(tokens)
    table(tokens, [("id", "id"), ("name", "name"), ("role", "role"), ("starts with", "prefix"),
                   ("worker", "worker_id"), ("created", "created_at"), ("revoked", "revoked_at")])


@token.command("revoke")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def token_revoke(ctx, refs):
    """Revoke tokens by id or name: they stop working at once."""
    for ref in refs:
        for t in ctx.client.revoke_token(ref):
            click.echo(f"token {t['id']} ({t['name']}): revoked")
