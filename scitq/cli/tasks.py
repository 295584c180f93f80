"""scitq task add|list|show|output|relaunch|delete"""
import shlex
import sys

import click

from scitq.cli import cli
from scitq.cli.render import json_option, print_json, short, table, write_bytes

STATUSES = ["waiting", "pending", "assigned", "running", "succeeded", "failed", "canceled"]


@cli.group()
def task():
    """Submit and inspect tasks."""


def task_options(f):
    """The options of a task, shared by `task add` for one command or a file of them."""
    for opt in reversed([
        click.option("--retries", type=click.IntRange(0, 100), help="Attempts allowed after a failed one."),
        click.option("--retry-delay", type=click.FloatRange(0), help="Seconds before a retry."),
        click.option("--retry-backoff", type=click.FloatRange(1), help="Multiply the delay by this for each further retry."),
        click.option("--timeout", type=click.FloatRange(0, min_open=True), help="Seconds the command may run (then it is killed: reason timeout)."),
        click.option("--staging-timeout", type=click.FloatRange(0, min_open=True), help="Seconds its downloads may take."),
        click.option("--depends-on", "-d", type=click.IntRange(1), multiple=True, help="A task id it waits for (repeatable)."),
        click.option("--container", help="Docker image to run the command in."),
        click.option("--container-options", help="docker run options, e.g. '-e X=1 --gpus all'."),
        click.option("--input", "-i", "inputs", multiple=True, help="URI downloaded into $INPUT (repeatable; |gunzip |untar |unzip |mv:DIR)."),
        click.option("--resource", "-r", "resources", multiple=True, help="URI cached on the worker, read-only in $RESOURCE (repeatable)."),
        click.option("--output", "-o", help="URI that receives the content of $OUTPUT after the run."),
        click.option("--use-cache", is_flag=True, default=None, help="Reuse a succeeded run with the same command, container and inputs."),
    ]):
        f = opt(f)
    return f


def _options(kw):
    out = {k: v for k, v in kw.items() if v not in (None, ())}
    for key in ("depends_on", "inputs", "resources"):
        if key in out:
            out[key] = list(out[key])
    return out


@task.command("add")
@click.argument("command", nargs=-1)
@click.option("--batch", "-b", help="Batch name (created if missing; default: 'default').")
@click.option("--name", "-n", help="A name for the task.")
@click.option("--no-shell", is_flag=True, help="Run the command without /bin/sh (split into argv).")
@click.option("--file", "-f", "from_file", type=click.File("r"),
              help="Submit one task per non-empty line of this file ('-': standard input).")
@click.option("--submission", help="With --file: a name of this submission; the same command "
              "again (after a crash) stores only what was not stored yet.")
@task_options
@json_option
@click.pass_obj
def task_add(ctx, command, batch, name, no_shell, from_file, submission, as_json, **kw):
    """Queue COMMAND (quote it, or put it after --). Prints the new task id(s)."""
    options = _options(kw)
    if submission is not None and not from_file:
        raise click.UsageError("--submission goes with --file")
    if from_file:
        if command:
            raise click.UsageError("give a COMMAND or --file, not both")
        lines = [line.rstrip("\n") for line in from_file if line.strip()]
        if not lines:
            raise click.UsageError("the file holds no command")
        ids = ctx.client.add_tasks([{"command": c, "shell": not no_shell, **options} for c in lines],
                                   batch=batch, submission=submission)
        print_json({"ids": ids}) if as_json else click.echo("\n".join(map(str, ids)))
        return
    if not command:
        raise click.UsageError("missing COMMAND")
    line = command[0] if len(command) == 1 else shlex.join(command)
    t = ctx.client.add_task(line, name=name, batch=batch, shell=not no_shell, **options)
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
                  ("attempt", lambda t: f"{t['attempt']}/{t['retries'] + 1}"),
                  ("command", lambda t: short(t["command"])), ("reason", lambda t: short(t["reason"] or ""))])
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
    for key in ("id", "name", "batch", "status", "reason", "attempt", "retries", "depends_on",
                "timeout", "container", "inputs", "resources", "output", "use_cache",
                "created_at", "updated_at"):
        value = t.get(key)
        if value in (None, [], False) and key not in ("status", "attempt", "retries"):
            continue
        click.echo(f"{key:>10}: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    click.echo(f"{'command':>10}: {t['command']}")
    if t["executions"]:
        table(t["executions"], [("execution", "id"), ("worker", "worker"), ("status", "status"),
                                ("rc", "return_code"), ("reason", "reason"),
                                ("started", "started_at"), ("ended", "ended_at"),
                                ("stdout", "stdout_bytes"), ("stderr", "stderr_bytes"),
                                ("error", "error")], title="attempts")


@task.command("output")
@click.argument("task_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the task runs, its "
              "standard error to ours, then its end; exit 1 if it failed.")
@click.option("--stderr", "stream", flag_value="stderr", help="Standard error instead of output.")
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@click.option("--execution", "-e", type=int, help="An earlier execution (default: the latest).")
@click.pass_obj
def task_output(ctx, task_id, follow, stream, execution):
    """Print what the task printed (its latest execution)."""
    if follow:
        return _follow(ctx.client, task_id, stream, execution)
    offset = 0
    while True:
        data, size, _ = ctx.client.output(task_id, stream, offset, execution_id=execution)
        write_bytes(data)
        offset += len(data)
        if not data or offset >= size:
            return


def _follow(client, task_id, stream, execution):
    """Both streams (or the one asked) as they come, then how the execution ended."""
    streams = ("stdout", "stderr") if stream == "stdout" else (stream,)
    eid = execution or client.latest_execution(task_id)
    for name, chunk in client.follow_streams(task_id, streams, execution_id=eid):
        write_bytes(chunk, err=name == "stderr" and len(streams) > 1)
    e = client.execution(eid)
    detail = "; ".join(str(x) for x in (e.get("reason"), e.get("error"))
                       if x and x != "exit_code")   # the exit code says that one
    rc = e.get("return_code")
    click.echo(f"task {task_id}: {e['status']}" + (f" (exit code {rc})" if rc is not None else "")
               + (f": {detail}" if detail and e["status"] != "succeeded" else ""), err=True)
    if e["status"] != "succeeded":
        sys.exit(1)


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



def _each(verb, call, doc):
    @task.command(verb, help=doc)
    @click.argument("task_ids", type=int, nargs=-1, required=True)
    @click.pass_obj
    def command(ctx, task_ids):
        for tid in task_ids:
            t = call(ctx.client, tid)
            click.echo(f"task {t['id']}: {t['status']}" + (f" ({t['reason']})" if t.get("reason") else ""))
    return command


_each("force", lambda c, t: c.force_task(t), "Run waiting or canceled tasks now, whatever their dependencies say.")
_each("kill", lambda c, t: c.kill_task(t), "Kill running tasks (they fail, without retry); tasks not started are canceled.")
_each("pause", lambda c, t: c.pause_task(t), "Suspend running tasks (SIGSTOP, or docker pause).")
_each("resume", lambda c, t: c.resume_task(t), "Continue paused tasks.")
