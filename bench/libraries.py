"""The hand-written hot-path code against the maintained libraries that do the same job.

    python bench/libraries.py [--rounds 5] [--calls 1000] [--checks 200] [--tasks 4000]
                              [--only http,check,worker]

http: the worker's calls to the server, made by each candidate on one kept-alive HTTP/1.1
connection: scitq.worker.http11.Client (hand-written), httpcore.AsyncConnectionPool (with
the few lines ServerLink would need around it: JSON body, URL, headers) and
httpx.AsyncClient (what ServerLink uses for https://). Each does the worker's two calls:
a poll (its real body; the answer brings 16 assignments) and a reports POST of 64 reports
(the answer acks them and brings 64 assignments). The server is a minimal asyncio HTTP/1.1
server in a subprocess on a free loopback port, answering those same-size JSON bodies at
once: a real scitq server would put its own CPU on the same 2 cores and its own time in
every call, and only the client's CPU is measured (time.process_time of this process).

check: a request body checked against the RESTX model's JSON Schema (with the definitions of
the models it nests: scitq.server.api.bodycheck.schema): fastjsonschema.compile (what
bodycheck runs), jsonschema's Draft4Validator (what validate=True runs; built once here,
where flask-restx builds one per request) and, where it is importable, the hand-written
fastcheck.compile_model that fastjsonschema replaced on 2026-12-07 (run this script with
PYTHONPATH on a tree of before that), on the workers' reports body (64 reports) and a bulk
submission of 1000 tasks; then each one's error on a broken body.

worker: the same two clients end to end (not in the default --only: a minute a round):
a `scitq server` on a throwaway SQLite file and 2 workers of concurrency 4 (tests/procs.py)
run --tasks no-op tasks (`true`) after a warm-up, at the sized prefetch and at a pinned 16,
each time with http11 and with httpx (made to take every URL by a sitecustomize in a
temporary folder on the workers' PYTHONPATH). It gives the workers' own CPU per task (their
shells left out, psutil), tasks/s, and tasks per reports call (the server's metrics).

Candidates alternate within each round, their order rotating, so that other load on the
machine falls on all of them; the figures are the median and the spread (min-max) over
the rounds. Nothing is asserted: it prints figures.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

REPORTS = 64
dumps = json.dumps     # CoreLink.request takes a `json` argument, as ServerLink's clients do


def assignment(i):
    return {"execution_id": 100000 + i, "task_id": 50000 + i, "name": f"sample-{i}",
            "batch": "bench", "command": "bowtie2 -x ref -U /input/reads.fq -S /output/out.sam",
            "shell": True, "attempt": 1, "container": "quay.io/biocontainers/bowtie2:2.5.1",
            "container_options": None, "timeout": None, "staging_timeout": None,
            "output": "s3://bucket/results/", "use_cache": False,
            "inputs": [f"s3://bucket/reads/{i}.fq"], "resources": ["s3://bucket/ref.tgz"]}


POLL_BODY = {"known": list(range(100000, 100016)), "wait": 0, "concurrency": 4, "prefetch": None,
             "depth": 16, "status": "running", "stats": {"load": 1.5, "memory": 23.4, "disk": 41.0},
             "signaled": []}
REPORTS_BODY = {"reports": [{"execution_id": 100000 + i, "status": "succeeded", "pid": 4000 + i,
                             "return_code": 0} for i in range(REPORTS)],
                "queued": 12, "depth": 64, "more": True}
ANSWERS = {
    "poll": {"assignments": [assignment(i) for i in range(16)], "signals": [], "gone": [],
             "concurrency": 4, "prefetch": None, "status": "running"},
    "reports": {"acked": [100000 + i for i in range(REPORTS)], "refused": [],
                "assignments": [assignment(i) for i in range(REPORTS)]},
}


# -- the loopback server (run as `libraries.py --serve` in its own process) -----------------

async def serve():
    bodies = {k: json.dumps(v).encode() for k, v in ANSWERS.items()}

    async def handle(reader, writer):
        try:
            while line := await reader.readline():
                length = 0
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                body = bodies[line.split()[1].rsplit(b"/", 1)[-1].decode()]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Date: Mon, 07 Dec 2026 16:00:00 GMT\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# -- the HTTP candidates --------------------------------------------------------------------

class CoreLink:
    """What ServerLink would wrap around httpcore: JSON in and out, the base URL, headers."""

    def __init__(self, base_url, headers):
        import httpcore
        self.base = base_url
        self.headers = [(b"Accept", b"application/json")] + [
            (k.encode(), v.encode()) for k, v in headers.items()]
        self.pool = httpcore.AsyncConnectionPool(max_connections=64, max_keepalive_connections=16)
        self.timeouts = {"timeout": {"connect": 30.0, "read": 50.0, "write": 30.0, "pool": 30.0}}

    async def request(self, method, path, *, json=None):
        body = dumps(json, separators=(",", ":")).encode()
        resp = await self.pool.request(
            method, self.base + path, content=body, extensions=self.timeouts,
            headers=self.headers + [(b"Content-Type", b"application/json"),
                                    (b"Content-Length", str(len(body)).encode())])
        resp.status_code = resp.status
        return resp

    async def aclose(self):
        await self.pool.aclose()


def http_candidates(base):
    import httpx

    from scitq.worker import http11
    headers = {"Authorization": "Bearer 0123456789abcdef0123456789abcdef"}
    return {
        "http11 (hand-written)": lambda: http11.Client(base, headers=headers, read_timeout=50.0),
        "httpcore pool": lambda: CoreLink(base, headers),
        "httpx AsyncClient": lambda: httpx.AsyncClient(
            base_url=base, headers=headers, timeout=httpx.Timeout(30.0, read=50.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)),
    }


async def time_calls(make, path, body, calls):
    """(CPU µs per call, calls/s) for `calls` sequential calls, after a warm-up."""
    client = make()
    try:
        for _ in range(20):
            json.loads((await client.request("POST", path, json=body)).content)
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            resp = await client.request("POST", path, json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}")
            json.loads(resp.content)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await client.aclose()
    return cpu / calls * 1e6, calls / wall


def bench_http(rounds, calls):
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{int(server.stdout.readline())}/api/v1"
        candidates = http_candidates(base)
        kinds = {"poll (16 assignments back)": ("/workers/1/poll", POLL_BODY),
                 f"reports ({REPORTS} reports, {REPORTS} assignments back)":
                     ("/workers/1/reports", REPORTS_BODY)}
        figures = {(k, c): [] for k in kinds for c in candidates}
        names = list(candidates)
        for r in range(rounds):
            for c in names[r % len(names):] + names[:r % len(names)]:
                for k, (path, body) in kinds.items():
                    figures[k, c].append(asyncio.run(time_calls(candidates[c], path, body, calls)))
        return figures, kinds, names
    finally:
        server.terminate()
        server.wait()


# -- the worker end to end ----------------------------------------------------------------

FORCE_HTTPX = "from scitq.worker import http11\nhttp11.usable = lambda url: False\n"


def run_workers(tmp, client, prefetch, tasks):
    """(workers' own CPU ms per task, tasks/s, tasks per reports call) for one run."""
    import re

    import httpx
    import psutil
    sys.path.insert(0, str(HERE.parent / "tests"))
    from procs import Procs, wait_until

    from scitq.client import Client
    site = tmp / "httpx-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(FORCE_HTTPX)
    procs = Procs(tmp)

    def reports_calls(url):
        return float(re.search(r"scitq_report_seconds_count (\S+)", httpx.get(url + "/metrics").text)[1])

    def cpu(pids):
        return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)
    try:
        server = procs.server(f"sqlite:///{tmp}/db.sqlite", "--log-level", "WARNING")
        env = {"PYTHONPATH": str(site)} if client == "httpx" else None
        pinned = [] if prefetch == "auto" else ["--prefetch", prefetch]
        pids = [procs.worker(server.url, f"w{i}", 4, "--log-level", "WARNING", *pinned, env=env).pid
                for i in range(2)]
        with Client(server.url) as c:
            wait_until(lambda: len(c.workers()) == 2, 30, what="worker registration")
            c.add_tasks([{"command": "true"}] * 300, batch="warmup")
            c.wait_batch("warmup", interval=0.2, timeout=300)
            calls, cpu0, t0 = reports_calls(server.url), cpu(pids), time.perf_counter()
            c.add_tasks([{"command": "true"}] * tasks, batch="bench")
            c.wait_batch("bench", interval=0.25, timeout=900)
            elapsed, used = time.perf_counter() - t0, cpu(pids) - cpu0
            calls = reports_calls(server.url) - calls
        return used / tasks * 1e3, tasks / elapsed, tasks / calls
    finally:
        procs.cleanup()


def bench_worker(rounds, tasks):
    import tempfile
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for prefetch in ("auto", "16"):
                for client in ("http11", "httpx")[::1 if r % 2 == 0 else -1]:
                    run = Path(tmp) / f"{r}-{prefetch}-{client}"
                    run.mkdir()
                    figures.setdefault((prefetch, client), []).append(
                        run_workers(run, client, prefetch, tasks))
    return figures


# -- the check candidates -------------------------------------------------------------------

def check_candidates(model):
    import fastjsonschema
    from jsonschema import Draft4Validator

    from scitq.server.api.bodycheck import schema
    body_schema = schema(model)
    validator = Draft4Validator(body_schema)
    out = {"fastjsonschema": fastjsonschema.compile(body_schema, use_default=False, use_formats=False,
                                                    fast_fail=False),
           "jsonschema Draft4": lambda body: list(validator.iter_errors(body))}
    try:        # the hand-written checks fastjsonschema replaced (2026-12-07)
        from scitq.server.api.fastcheck import compile_model
        out = {"fastcheck (hand-written)": compile_model(model), **out}
    except ImportError:
        pass
    return out


def bench_checks(rounds, checks):
    from scitq.server.api import tasks, workers
    bulk = {"batch": "bench", "tasks": [
        {"command": f"bowtie2 -x ref -U /input/{i}.fq", "name": f"sample-{i}", "shell": True,
         "container": "quay.io/biocontainers/bowtie2:2.5.1", "inputs": [f"s3://bucket/{i}.fq"],
         "resources": ["s3://bucket/ref.tgz"], "output": "s3://bucket/out/", "retries": 2}
        for i in range(1000)]}
    cases = {f"reports ({REPORTS} reports)": (workers.reports_in, REPORTS_BODY),
             "bulk submission (1000 tasks)": (tasks.bulk_in, bulk)}
    compiled = {k: check_candidates(model) for k, (model, _) in cases.items()}
    names = list(next(iter(compiled.values())))
    figures = {(k, c): [] for k in cases for c in names}
    for r in range(rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:
            for k, (_, body) in cases.items():
                check = compiled[k][c]
                n = max(5, checks // (20 if "bulk" in k else 1))
                cpu = time.process_time()
                for _ in range(n):
                    check(body)
                figures[k, c].append((time.process_time() - cpu) / n * 1e6)
    return figures, cases, names, compiled[f"reports ({REPORTS} reports)"]


def errors_on(bad, candidates):
    """What each candidate says of a broken reports body, and what the API answers."""
    from scitq.server.api import bodycheck, workers
    errors = {}
    served = {"bodycheck (the API's 400)": bodycheck.compile_model(workers.reports_in)}
    for c, check in {**candidates, **served}.items():
        try:
            out = check(bad)
            errors[c] = "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in out) or "passed"
        except Exception as exc:     # each library's own error type: shown as it comes
            errors[c] = f"{type(exc).__name__}: {exc} {getattr(exc, 'detail', '') or ''}".strip()
    return errors


def spread(values, digits=1):
    return f"{median(values):9.{digits}f}  ({min(values):.{digits}f}-{max(values):.{digits}f})"


def show_http(args):
    figures, kinds, names = bench_http(args.rounds, args.calls)
    for k in kinds:
        print(f"\n{k}: client CPU µs/call, calls/s")
        for c in names:
            rate = median(f[1] for f in figures[k, c])
            print(f"  {c:24} {spread([f[0] for f in figures[k, c]])}   {rate:7.0f}/s")


def show_checks(args):
    figures, cases, names, reports_checks = bench_checks(args.rounds, args.checks)
    for k in cases:
        print(f"\n{k}: µs/check")
        for c in names:
            print(f"  {c:24} {spread(figures[k, c])}")
    bad = {"reports": [{"execution_id": 1, "status": "done"}]}
    print(f"\nthe error on {bad}:")
    for c, text in errors_on(bad, reports_checks).items():
        print(f"  {c:24} {text}")


def show_worker(args):
    figures = bench_worker(args.rounds, args.tasks)
    print(f"\n2 workers of 4, {args.tasks} no-op tasks: workers' own CPU ms/task, tasks/s, "
          "tasks per reports call")
    for (prefetch, client), runs in figures.items():
        print(f"  prefetch {prefetch:4} {client:8} {spread([f[0] for f in runs], 3)}  "
              f"{median(f[1] for f in runs):7.0f}/s  {median(f[2] for f in runs):5.1f}")


PARTS = {"http": show_http, "check": show_checks, "worker": show_worker}


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """A bad argument: one line and exit 2 (argparse would print the usage first)."""
        self.exit(2, f"libraries.py: {message}\n")


def main():
    parser = Parser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--calls", type=int, default=1000, help="HTTP calls per kind, candidate and round")
    parser.add_argument("--checks", type=int, default=200, help="checks of the reports body per "
                        "candidate and round (the bulk body: a twentieth of that)")
    parser.add_argument("--tasks", type=int, default=4000, help="no-op tasks per worker run")
    parser.add_argument("--only", default="http,check", help="http, check, worker: the parts "
                        "to run (default: http,check)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return
    parts = args.only.split(",")
    if set(parts) - set(PARTS) or min(args.rounds, args.calls, args.checks, args.tasks) < 1:
        parser.error("--only takes http, check, worker; --rounds, --calls, --checks, --tasks "
                     "take a number above 0")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.rounds} rounds, median (min-max)")
    for name in PARTS:
        if name in parts:
            PARTS[name](args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
