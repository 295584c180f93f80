"""The `scitq` command. Bad input exits 2 with one line; an unreachable server exits 1."""
import sys

import click
from click.core import ParameterSource

from scitq.errors import ScitqError, ServerUnreachable


class Context:
    """What every sub-command needs: the server URL and a lazily made client."""

    def __init__(self, server, token=None, token_source=None, ca=None):
        self.server = server
        self.token = token
        self.token_source = token_source
        self.ca = ca
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from scitq.client import Client
            self._client = Client(self.server, token=self.token, token_source=self.token_source,
                                  ca=self.ca)
        return self._client


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", envvar="SCITQ_SERVER", metavar="URL",
              help="URL of the scitq server (or SCITQ_SERVER; default: the config file's default "
              "server, else the `scitq up` of this machine's data dir, else http://127.0.0.1:5000).")
@click.option("--token", envvar="SCITQ_TOKEN", help="API token, when the server has auth on (or "
              "SCITQ_TOKEN; default: the server's token in the config file, see `scitq login`; "
              "for the server of this machine's data dir, its admin.token).")
@click.option("--ca", envvar="SCITQ_CA", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate file an https server is verified against (or SCITQ_CA; "
              "default: the system's store).")
@click.version_option(package_name="scitq")
@click.pass_context
def cli(ctx, server, token, ca):
    """scitq: queue shell tasks, watch them run, trust that nothing was lost."""
    source = ctx.get_parameter_source("token")
    ctx.obj = Context(server, token, "SCITQ_TOKEN" if source is ParameterSource.ENVIRONMENT
                      else "--token", ca)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="scitq", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:       # usage errors: one line, exit 2
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(2)
    except ServerUnreachable as err:
        click.echo(f"error: {err.message}", err=True)
        sys.exit(1)
    except ScitqError as err:
        click.echo(f"error: {err.message}{_detail(err.detail)}", err=True)
        sys.exit(2 if 400 <= err.http_status < 500 else 1)
    except BrokenPipeError:
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)


def _detail(detail):
    """Validation details on the same line: 'field: problem; field: problem'."""
    if isinstance(detail, dict) and detail:
        return " (" + "; ".join(f"{k}: {v}" for k, v in detail.items()) + ")"
    return ""


from scitq.cli import (batches, deploys, logins, providers, recruiters, servers,  # noqa: E402
                       tasks, tokens, workers)  # (they register on `cli`)

__all__ = ["cli", "main", "batches", "deploys", "logins", "providers", "recruiters", "servers",
           "tasks", "tokens", "workers"]
