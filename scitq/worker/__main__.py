"""`python -m scitq.worker URL`: the worker with nothing but httpx (no click, no rich).

This is how deployed hosts run it. Every option also reads a SCITQ_* variable, so a service
can keep its whole configuration in one environment file (SCITQ_SERVER, SCITQ_CONCURRENCY,
SCITQ_PREFETCH, SCITQ_NAME, SCITQ_BATCH, SCITQ_WORKDIR, SCITQ_DOCKER_HOST, SCITQ_LOG_LEVEL,
SCITQ_CA, SCITQ_TASK_USER); the token is SCITQ_TOKEN_FILE (a file of mode 0600) or SCITQ_TOKEN,
never an argument (it would show in `ps`); either is taken out of the environment before any
task starts.
"""
import argparse
import asyncio
import os
import sys
import tempfile

from scitq.log import setup as setup_logging
from scitq.worker import Worker, taskuser
from scitq.worker.credential import take_token


def count(low):
    def parse(text):
        value = int(text)
        if not low <= value <= 1024:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and 1024")
        return value
    return parse


def prefetch(text):
    return None if text == "auto" else count(0)(text)


def parser(env=os.environ):
    p = argparse.ArgumentParser(prog="python -m scitq.worker",
                                description="Run a scitq worker until SIGTERM (which drains it).")
    p.add_argument("url", nargs="?" if env.get("SCITQ_SERVER") else None, default=env.get("SCITQ_SERVER"),
                   help="URL of the scitq server (or SCITQ_SERVER)")
    p.add_argument("--concurrency", "-c", type=count(1), default=env.get("SCITQ_CONCURRENCY", "1"),
                   help="tasks run at once (default 1)")
    p.add_argument("--prefetch", "-p", type=prefetch, default=env.get("SCITQ_PREFETCH", "auto"),
                   help="tasks taken ahead, ready to start when a slot frees: a number, or auto "
                        "(the default: sized from the tasks' durations and the round trips)")
    p.add_argument("--name", "-n", default=env.get("SCITQ_NAME") or None,
                   help="worker name (default: the host name)")
    p.add_argument("--batch", "-b", default=env.get("SCITQ_BATCH") or None, help="only take tasks of this batch")
    p.add_argument("--workdir", default=env.get("SCITQ_WORKDIR") or None, help="scratch space for tasks")
    p.add_argument("--docker-host", default=env.get("SCITQ_DOCKER_HOST") or None,
                   help="docker engine of docker tasks (default: DOCKER_HOST, else the local socket)")
    p.add_argument("--ca", default=env.get("SCITQ_CA") or None,
                   help="CA certificate file the https server is verified against (default: the system's)")
    p.add_argument("--task-user", default=env.get("SCITQ_TASK_USER") or None,
                   help="run tasks as this user (the worker must run as root): a task then cannot "
                        "read the worker's token")
    p.add_argument("--log-level", default=env.get("SCITQ_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    return p


def main(argv=None, env=os.environ):
    p = parser(env)
    args = p.parse_args(argv)
    try:
        token = take_token(env)
        task_user = taskuser.checked(args.task_user, args.workdir or tempfile.gettempdir())
    except ValueError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)      # one line, as argparse's own end
        return 2
    setup_logging(args.log_level)
    worker = Worker(args.url, name=args.name, concurrency=args.concurrency, prefetch=args.prefetch,
                    batch=args.batch, workdir=args.workdir, token=token,
                    docker_host=args.docker_host, ca=args.ca, task_user=task_user)
    return asyncio.run(worker.run())


if __name__ == "__main__":
    raise SystemExit(main())
