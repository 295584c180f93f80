"""scitq batch list|show|pause|resume|delete|wait"""
import sys

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scitq.cli import cli
from scitq.cli.render import console, json_option, print_json, table

COUNT_COLUMNS = ["waiting", "pending", "assigned", "running", "succeeded", "failed",
                 "canceled", "remaining", "total"]


@cli.group()
def batch():
    """Follow and steer batches of tasks."""


def _rows(batches):
    return [{**{k: b[k] for k in ("id", "name", "status")}, **b["counts"]} for b in batches]


@batch.command("list")
@json_option
@click.pass_obj
def batch_list(ctx, as_json):
    """Every batch with what is done, running, failed and remaining."""
    batches = ctx.client.batches()
    if as_json:
        return print_json(batches)
    table(_rows(batches), [(c, c) for c in ["id", "name", "status"] + COUNT_COLUMNS])


@batch.command("create")
@click.argument("name")
@click.option("--concurrency", "-c", type=click.IntRange(1), help="Cap on its tasks running at once.")
@click.pass_obj
def batch_create(ctx, name, concurrency):
    """Create an empty batch (adding tasks also creates theirs)."""
    b = ctx.client.create_batch(name, concurrency=concurrency)
    click.echo(f"batch {b['name']}: created (id {b['id']})")


@batch.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
def batch_show(ctx, ref, as_json):
    """One batch (by name or id)."""
    b = ctx.client.batch(ref)
    if as_json:
        return print_json(b)
    table(_rows([b]), [(c, c) for c in ["id", "name", "status"] + COUNT_COLUMNS])


@batch.command("pause")
@click.argument("ref")
@click.option("--running", is_flag=True, help="Also suspend (SIGSTOP) its running tasks.")
@click.pass_obj
def batch_pause(ctx, ref, running):
    """Hold the batch's pending tasks; running ones go on (unless --running)."""
    b = ctx.client.pause_batch(ref, running=running)
    click.echo(f"batch {b['name']}: {b['status']}")


@batch.command("stop")
@click.argument("ref")
@click.option("--requeue/--fail", default=False, show_default=True,
              help="Put the killed tasks back to pending (no retry spent), or fail them.")
@click.pass_obj
def batch_stop(ctx, ref, requeue):
    """Pause the batch and kill its running tasks."""
    b = ctx.client.stop_batch(ref, requeue=requeue)
    click.echo(f"batch {b['name']}: {b['status']}, running tasks "
               f"{'put back in the queue' if requeue else 'killed'}")


@batch.command("set")
@click.argument("ref")
@click.option("--concurrency", "-c", type=click.IntRange(0),
              help="At most this many of its tasks running at once (0: no cap).")
@json_option
@click.pass_obj
def batch_set(ctx, ref, concurrency, as_json):
    """Change a batch's settings."""
    if concurrency is None:
        raise click.UsageError("nothing to change: give --concurrency")
    b = ctx.client.set_batch(ref, concurrency=concurrency or None)
    if as_json:
        return print_json(b)
    click.echo(f"batch {b['name']}: concurrency {b['concurrency'] or 'not capped'}")


@batch.command("resume")
@click.argument("ref")
@click.pass_obj
def batch_resume(ctx, ref):
    """Let a paused batch's tasks be dispatched again (and continue suspended ones)."""
    b = ctx.client.resume_batch(ref)
    click.echo(f"batch {b['name']}: {b['status']}")


@batch.command("delete")
@click.argument("ref")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.pass_obj
def batch_delete(ctx, ref, yes):
    """Delete a batch with all its tasks and outputs."""
    b = ctx.client.batch(ref)
    if not yes and sys.stdin.isatty():
        click.confirm(f"delete batch {b['name']} and its {b['counts']['total']} task(s)?", abort=True)
    ctx.client.delete_batch(b["id"])
    click.echo(f"batch {b['name']}: deleted")


@batch.command("wait")
@click.argument("ref")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
@click.option("--timeout", type=click.FloatRange(0), help="Give up after this many seconds (exit 3).")
@click.pass_obj
def batch_wait(ctx, ref, interval, timeout):
    """Draw progress until nothing remains; exit 1 if any task failed."""
    ctx.client.batch(ref)           # an unknown batch is an error before any bar is drawn
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task(ref, total=None, detail="")

        def show(b):
            c = b["counts"]
            progress.update(bar, total=c["total"], completed=c["total"] - c["remaining"],
                            detail=f"running {c['running']}  failed {c['failed']}  "
                                   f"remaining {c['remaining']}")

        try:
            b = ctx.client.wait_batch(ref, interval=interval, timeout=timeout, progress=show,
                                      check=False)
        except TimeoutError as err:
            progress.stop()
            click.echo(f"error: {err}", err=True)
            sys.exit(3)
    failed = b["counts"]["failed"] + b["counts"]["canceled"]
    if failed:
        click.echo(f"batch {b['name']}: {failed} task(s) failed or canceled", err=True)
        sys.exit(1)
    click.echo(f"batch {b['name']}: all {b['counts']['succeeded']} task(s) succeeded")
