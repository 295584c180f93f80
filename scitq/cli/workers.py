"""scitq worker URL (run one) and scitq worker list|set|delete"""
import click

from scitq.cli import cli
from scitq.cli.options import PREFETCH, PREFETCH_HELP, prefetch_value
from scitq.cli.render import ago, json_option, print_json, table


class WorkerGroup(click.Group):
    """`scitq worker URL ...` runs a worker; `scitq worker list` etc. manage them."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=WorkerGroup)
def worker():
    """Run a worker (scitq worker URL), or list and steer workers."""


@worker.command("start")
@click.argument("url")
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Tasks run at once.")
@click.option("--prefetch", "-p", type=PREFETCH, default="auto", show_default=True, help=PREFETCH_HELP)
@click.option("--name", "-n", help="Worker name (default: the host name).")
@click.option("--batch", "-b", help="Only take tasks of this batch.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Scratch space for tasks.")
@click.option("--docker-host", envvar="SCITQ_DOCKER_HOST",
              help="Docker engine of docker tasks (default: DOCKER_HOST, else the local socket).")
@click.option("--ca", envvar="SCITQ_CA", type=click.Path(dir_okay=False, exists=True),
              help="CA certificate file the https server is verified against (or SCITQ_CA; "
              "default: the system's store).")
@click.option("--task-user", envvar="SCITQ_TASK_USER",
              help="Run tasks as this user (the worker must run as root): a task then cannot read "
              "the worker's token (or SCITQ_TASK_USER).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--parent-fd", type=click.IntRange(0), hidden=True,
              help="A pipe's read end held open by the parent (`scitq up`): exit when it closes.")
def worker_start(url, concurrency, prefetch, name, batch, workdir, docker_host, ca, task_user, log_level,
                 parent_fd):
    """Run a worker for the server at URL until SIGTERM (which drains it)."""
    import asyncio
    import tempfile

    from scitq.log import setup as setup_logging
    from scitq.worker import Worker, taskuser
    from scitq.worker.credential import take_token

    try:
        token = take_token()
        task_user = taskuser.checked(task_user, workdir or tempfile.gettempdir())
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    setup_logging(log_level)
    w = Worker(url, name=name, concurrency=concurrency, prefetch=prefetch_value(prefetch), batch=batch,
               workdir=workdir, token=token, docker_host=docker_host, parent_fd=parent_fd, ca=ca,
               task_user=task_user)
    raise SystemExit(asyncio.run(w.run()))


@worker.command("list")
@json_option
@click.pass_obj
def worker_list(ctx, as_json):
    """Workers with their load and what they run."""
    workers = ctx.client.workers()
    if as_json:
        return print_json(workers)
    table(workers, [("id", "id"), ("name", "name"), ("status", "status"),
                    ("running", lambda w: f"{w['running']}/{w['concurrency']}"),
                    ("prefetch", _prefetch), ("batch", "batch"), ("load", "load"),
                    ("mem %", "memory"), ("disk %", "disk"), ("seen", lambda w: ago(w["last_seen"])),
                    ("set on server", lambda w: ", ".join(sorted(w.get("set_on_server") or ())) or None)])


@worker.command("set")
@click.argument("ref")
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024))
@click.option("--prefetch", "-p", type=PREFETCH, help="A number, or auto (the worker sizes it).")
@click.option("--status", type=click.Choice(["running", "paused", "draining"]),
              help="paused: takes nothing new; draining: finishes its tasks and exits.")
@click.option("--batch", "-b", help="Only take tasks of this batch ('' for any).")
@json_option
@click.pass_obj
def worker_set(ctx, ref, concurrency, prefetch, status, batch, as_json):
    """Change a worker (by name or id); it applies the change at once."""
    changes = {k: v for k, v in {"concurrency": concurrency, "prefetch": prefetch,
                                 "status": status}.items() if v is not None}
    if prefetch is not None:
        changes["prefetch"] = prefetch_value(prefetch)
    if batch is not None:
        changes["batch"] = batch or None
    if not changes:
        raise click.UsageError("nothing to change: give --concurrency, --prefetch, --status or --batch")
    w = ctx.client.set_worker(ref, **changes)
    if as_json:
        return print_json(w)
    click.echo(f"worker {w['name']}: {w['status']}, concurrency {w['concurrency']}, "
               f"prefetch {_prefetch(w)}")


@worker.command("delete")
@click.argument("ref")
@click.pass_obj
def worker_delete(ctx, ref):
    """Forget a worker; the tasks it held go back to the queue."""
    out = ctx.client.delete_worker(ref)
    click.echo(f"worker {ref}: deleted, {out['given_back']} task(s) given back to the queue")


def _status(verb, status, doc):
    @worker.command(verb, help=doc)
    @click.argument("refs", nargs=-1, required=True)
    @click.pass_obj
    def command(ctx, refs):
        for ref in refs:
            w = ctx.client.set_worker(ref, status=status)
            click.echo(f"worker {w['name']}: {w['status']}")
    return command


_status("pause", "paused", "Take nothing new; running tasks go on.")
_status("resume", "running", "Take tasks again after a pause.")
_status("drain", "draining", "Finish running tasks, give back the others, then exit.")


def _prefetch(w):
    return w["prefetch"] if w["prefetch"] is not None else f"auto ({w.get('depth', 0)})"
