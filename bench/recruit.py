"""Recruitment at scale: the reconciler's pass time with 1,000 hosts and 200,000 tasks.

    python bench/recruit.py [--hosts 1000] [--tasks 200000]

The real reconciler and policy on a real database (SQLite, then a throwaway PostgreSQL),
with a fake cloud and a fake clock (tests/recruitsim.py): four batches, a recruiter each,
hosts ordered, registered, working 20 tasks a tick, idle, deleted. It prints how many
passes it took to converge and drain, the pass times, and the creates and deletes made
(each host once: no churn). The creates and deletes themselves run apart, as the job
runner runs them in a server.
"""
import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402
from fakes.cloud import FakeCloud  # noqa: E402
from recruitsim import Sim  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(db_url, data_dir, hosts, tasks):
    regions = ("r1", "r2", "r3", "r4")
    cloud = FakeCloud(regions=regions, quota={r: hosts // 2 for r in regions})
    sim = Sim(db_url, data_dir, {"fake": cloud}, tick=10)
    try:
        for i in range(4):
            b = sim.batch(f"b{i}", tasks=tasks // 4)
            sim.recruiter(b, max_workers=hosts // 4, tasks_per_worker=tasks // hosts, idle_timeout=60)
        return (sim.ticks, *sim.run(per_worker=20))
    finally:
        sim.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=200_000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        rows.append(("sqlite", *run(f"sqlite:///{tmp}/r.db", tmp / "s", args.hosts, args.tasks)))
        cluster = pgcluster.start(tmp / "pg")
        try:
            url = cluster.create_database("recruit")
            rows.append(("postgresql", *run(url, tmp / "p", args.hosts, args.tasks)))
        finally:
            cluster.stop()
    print(f"reconciler passes, {args.hosts} hosts (max), {args.tasks} tasks, fake cloud and clock "
          f"({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'database':<12}{'passes':>7}{'creates':>9}{'deletes':>9}{'peak':>6}"
          f"{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, ticks, creates, deletes, peak in rows:
        ms = [t * 1000 for t in ticks]
        print(f"{name:<12}{len(ticks):>7}{creates:>9}{deletes:>9}{peak:>6}"
              f"{statistics.median(ms):>9.1f}{pct(ms, 95):>9.1f}{max(ms):>9.1f}")


if __name__ == "__main__":
    main()
