"""scitq login URL | scitq logout URL: a token per server, in the user's config file."""
import click

from scitq import config
from scitq.cli import cli


@cli.command()
@click.argument("url")
@click.option("--token", "-t", help="The token (default: asked, or read from standard input; "
              "a token on the command line shows in `ps` and in the shell's history).")
@click.option("--default/--no-default", "make_default", default=None,
              help="Make it the server of commands without --server (default: if there is none yet).")
@click.pass_obj
def login(obj, url, token, make_default):
    """Check a token against the server at URL and keep it for that server alone (with the
    CA its https was verified with: `scitq --ca FILE login URL`)."""
    from scitq.client import Client
    key = config.normalize(url)
    token = (token or click.prompt("token", hide_input=True, err=True)).strip()
    if not token:
        raise click.UsageError("empty token")
    with Client(key, token=token, token_source="this login", ca=obj.ca) as c:
        c.batches()           # a wrong token or CA stops here, before it is kept
        ca = c.ca
    key, is_default, ca = config.login(key, token, make_default, ca=ca)
    click.echo(f"logged in to {key}{' (the default server)' if is_default else ''}; "
               f"token{f' and CA {ca}' if ca else ''} kept in {config.config_path()}", err=True)


@cli.command()
@click.argument("url")
def logout(url):
    """Forget the token kept for the server at URL."""
    key = config.normalize(url)
    if not config.logout(key):
        raise click.UsageError(f"no token kept for {key} in {config.config_path()}")
    click.echo(f"logged out of {key}", err=True)
