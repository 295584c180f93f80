"""scitq task add|list|show|output|relaunch|delete"""
import shlex

import click

from scitq.cli import cli
from scitq.cli.render import json_option, print_json, short, table, write_bytes

STATUSES = ["waiting", "pending", "assigned", "running", "succeeded", "failed", "canceled"]


@cli.group()
def task():
    """Submit and inspect tasks."""


@task.command("add")
@click.argument("command", nargs=-1)
@click.option("--batch", "-b", help="Batch name (created if missing; default: 'default').")
@click.option("--name", "-n", help="A name for the task.")
@click.option("--no-shell", is_flag=True, help="Run the command without /bin/sh (split into argv).")
@click.option("--file", "-f", "from_file", type=click.File("r"),
              help="Submit one task per non-empty line of this file ('-': standard input).")
@json_option
@click.pass_obj
def task_add(ctx, command, batch, name, no_shell, from_file, as_json):
    """Queue COMMAND (quote it, or put it after --). Prints the new task id(s)."""
    if from_file:
        if command:
            raise click.UsageError("give a COMMAND or --file, not both")
        lines = [line.rstrip("\n") for line in from_file if line.strip()]
        if not lines:
            raise click.UsageError("the file holds no command")
        ids = ctx.client.add_tasks([{"command": c, "shell": not no_shell} for c in lines], batch=batch)
        print_json({"ids": ids}) if as_json else click.echo("\n".join(map(str, ids)))
        return
    if not command:
        raise click.UsageError("missing COMMAND")
    line = command[0] if len(command) == 1 else shlex.join(command)
    t = ctx.client.add_task(line, name=name, batch=batch, shell=not no_shell)
    print_json(t) if as_json else click.echo(t["id"])


@task.command("list")
@click.option("--batch", "-b", help="Batch id or name.")
@click.option("--status", "-s", type=click.Choice(STATUSES), multiple=True, help="Repeatable.")
@click.option("--name", "-n", help="Task name (* as wildcard).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", type=click.IntRange(0), help="Cursor: list tasks after this id.")
@click.option("--all", "every", is_flag=True, help="Every matching task, page after page.")
@json_option
@click.pass_obj
def task_list(ctx, batch, status, name, limit, after, every, as_json):
    """List tasks in submission order."""
    status = ",".join(status) or None
    if every:
        items = list(ctx.client.iter_tasks(batch=batch, status=status, name=name))
        nxt = None
    else:
        page = ctx.client.tasks(batch=batch, status=status, name=name, after=after, limit=limit)
        items, nxt = page["items"], page["next"]
    if as_json:
        return print_json(items)
    table(items, [("id", "id"), ("batch", "batch"), ("name", "name"), ("status", "status"),
                  ("attempt", "attempt"), ("command", lambda t: short(t["command"]))])
    if nxt:
        click.echo(f"more: scitq task list --after {nxt}", err=True)


@task.command("show")
@click.argument("task_id", type=int)
@json_option
@click.pass_obj
def task_show(ctx, task_id, as_json):
    """A task and every execution it had."""
    t = ctx.client.task(task_id)
    if as_json:
        return print_json(t)
    for key in ("id", "name", "batch", "status", "attempt", "shell", "created_at", "updated_at"):
        click.echo(f"{key:>10}: {t[key] if t[key] is not None else '-'}")
    click.echo(f"{'command':>10}: {t['command']}")
    if t["executions"]:
        table(t["executions"], [("execution", "id"), ("worker", "worker"), ("status", "status"),
                                ("rc", "return_code"), ("started", "started_at"),
                                ("ended", "ended_at"), ("stdout", "stdout_bytes"),
                                ("stderr", "stderr_bytes"), ("error", "error")])


@task.command("output")
@click.argument("task_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the task runs.")
@click.option("--stderr", "stream", flag_value="stderr", help="Standard error instead of output.")
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@click.option("--execution", "-e", type=int, help="An earlier execution (default: the latest).")
@click.pass_obj
def task_output(ctx, task_id, follow, stream, execution):
    """Print what the task printed (its latest execution)."""
    if follow:
        for chunk in ctx.client.follow_output(task_id, stream, execution_id=execution):
            write_bytes(chunk)
        return
    offset = 0
    while True:
        data, size, _ = ctx.client.output(task_id, stream, offset, execution_id=execution)
        write_bytes(data)
        offset += len(data)
        if not data or offset >= size:
            return


@task.command("relaunch")
@click.argument("task_ids", type=int, nargs=-1, required=True)
@click.pass_obj
def task_relaunch(ctx, task_ids):
    """Queue finished tasks again (their history stays)."""
    for tid in task_ids:
        t = ctx.client.relaunch_task(tid)
        click.echo(f"task {t['id']}: {t['status']}")


@task.command("delete")
@click.argument("task_ids", type=int, nargs=-1, required=True)
@click.pass_obj
def task_delete(ctx, task_ids):
    """Delete tasks that are not running, with their outputs."""
    for tid in task_ids:
        ctx.client.delete_task(tid)
        click.echo(f"task {tid}: deleted")


