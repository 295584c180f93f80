"""scitq deploy|undeploy HOST... and scitq job list|show|log|retry"""
import sys
import time

import click

from scitq.cli import cli
from scitq.cli.options import PREFETCH, PREFETCH_HELP, prefetch_value
from scitq.cli.render import ago, json_option, print_json, table, write_bytes

ENGINE = click.option("--engine", type=click.Choice(["pyinfra", "ansible"]),
                      help="Default: the server's --deploy-engine (pyinfra unless set).")
USER = click.option("--user", "-u", default="root", show_default=True, help="SSH user.")
PORT = click.option("--port", type=click.IntRange(1, 65535), default=22, show_default=True)
WAIT = click.option("--wait/--no-wait", default=True, show_default=True,
                    help="Follow the jobs until they end (exit 1 if one failed).")
JOB_COLUMNS = [("job", "id"), ("kind", "kind"), ("host", "target"), ("status", "status"),
               ("attempts", lambda j: f"{j['attempts']}/{j['max_attempts']}"),
               ("error", "error"), ("created", lambda j: ago(j["created_at"]))]


def _follow(client, jobs):
    """Wait for the jobs to end, printing each one's outcome; exit 1 if any failed."""
    pending = {j["id"]: j for j in jobs}
    failed = 0
    while pending:
        for jid in list(pending):
            j = client.job(jid)
            if j["status"] in ("succeeded", "failed"):
                del pending[jid]
                failed += j["status"] == "failed"
                click.echo(f"job {jid} {j['kind']} {j['target']}: {j['status']}"
                           + (f" ({j['error']})" if j["error"] else ""))
        time.sleep(1)
    if failed:
        click.echo(f"{failed} job(s) failed: see `scitq job log ID`", err=True)
        sys.exit(1)


@cli.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), default=1, show_default=True)
@click.option("--prefetch", "-p", type=PREFETCH, default="auto", show_default=True, help=PREFETCH_HELP)
@click.option("--batch", "-b", help="The workers take only tasks of this batch.")
@click.option("--server-url", help="How the hosts reach the server (default: its --public-url).")
@click.option("--attempts", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Attempts before the job fails.")
@ENGINE
@USER
@PORT
@WAIT
@json_option
@click.pass_obj
def deploy(ctx, hosts, concurrency, prefetch, batch, server_url, attempts, engine, user, port, wait,
           as_json):
    """Bootstrap a worker on each SSH host (the server's SSH key must be authorized there)."""
    jobs = ctx.client.deploy(list(hosts), concurrency=concurrency, prefetch=prefetch_value(prefetch), batch=batch,
                             server_url=server_url, engine=engine, user=user, port=port,
                             max_attempts=attempts)
    if as_json:
        return print_json(jobs)
    table(jobs, JOB_COLUMNS)
    if wait:
        _follow(ctx.client, jobs)


@cli.command()
@click.argument("hosts", nargs=-1, required=True)
@ENGINE
@USER
@PORT
@WAIT
@json_option
@click.pass_obj
def undeploy(ctx, hosts, engine, user, port, wait, as_json):
    """Stop and remove the worker from each host."""
    jobs = ctx.client.undeploy(list(hosts), engine=engine, user=user, port=port)
    if as_json:
        return print_json(jobs)
    table(jobs, JOB_COLUMNS)
    if wait:
        _follow(ctx.client, jobs)


@cli.group()
def job():
    """Background deploys and teardowns, with their logs."""


@job.command("list")
@click.option("--status", type=click.Choice(["pending", "running", "succeeded", "failed"]))
@click.option("--kind", type=click.Choice(["deploy", "teardown"]))
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
@click.pass_obj
def job_list(ctx, status, kind, limit, as_json):
    """Jobs, newest first."""
    items = ctx.client.jobs(status=status, kind=kind, limit=limit)["items"]
    if as_json:
        return print_json(items)
    table(items, JOB_COLUMNS)


@job.command("show")
@click.argument("job_id", type=int)
@json_option
@click.pass_obj
def job_show(ctx, job_id, as_json):
    """A deploy or teardown job: its target, attempts and last error."""
    j = ctx.client.job(job_id)
    if as_json:
        return print_json(j)
    for key in ("id", "kind", "target", "status", "attempts", "max_attempts", "error",
                "created_at", "started_at", "ended_at", "next_try_at"):
        click.echo(f"{key:>12}: {j[key] if j[key] is not None else '-'}")


@job.command("log")
@click.argument("job_id", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
@click.pass_obj
def job_log(ctx, job_id, follow):
    """What the job's deploy engine printed."""
    offset = 0
    while True:
        data, size, complete = ctx.client.job_log(job_id, offset)
        write_bytes(data)
        offset += len(data)
        if offset >= size and (complete or not follow):
            return
        if offset >= size:
            time.sleep(0.5)


@job.command("retry")
@click.argument("job_ids", type=int, nargs=-1, required=True)
@click.pass_obj
def job_retry(ctx, job_ids):
    """Run failed jobs again."""
    for jid in job_ids:
        j = ctx.client.retry_job(jid)
        click.echo(f"job {j['id']}: {j['status']}")
