"""scitq.workflow: declaring steps (no server), what a real server stores once they are
submitted, run() with a worker, and examples/mapreduce.py end to end."""
import importlib.util
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from scitq.errors import Conflict, NotFound
from scitq.workflow import Workflow, WorkflowFailed

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "mapreduce.py"
NOWHERE = "http://127.0.0.1:9"     # declaring steps never talks to the server


# --- declaring: pure logic -------------------------------------------------------------

def test_defaults_overrides_and_names():
    wf = Workflow("wf", server=NOWHERE, output="file:///data/out/", container="alpine",
                  retries=2, timeout=60)
    a = wf.step("a", "echo a")
    b = wf.step("a", "echo b", retries=0, timeout=5, container="ubuntu", task_name="second",
                output="s3://bucket/b/")
    c = wf.step("c", "echo c", resources="file:///ref/genome.fa")
    assert (a.name, a.index, b.name, b.index, c.name) == ("a-0", 0, "second", 1, "c-0")
    assert a.output == "file:///data/out/a/0/" and b.output == "s3://bucket/b/"
    assert (a.spec["retries"], a.spec["timeout"], a.spec["container"]) == (2, 60, "alpine")
    assert (b.spec["retries"], b.spec["timeout"], b.spec["container"]) == (0, 5, "ubuntu")
    assert c.spec["resources"] == ["file:///ref/genome.fa"]
    assert wf.batches == ["wf.a", "wf.c"]
    assert Workflow("bare", server=NOWHERE).step("s", "true").output is None


def test_gather_is_a_snapshot_of_the_iterations_so_far():
    wf = Workflow("wf", server=NOWHERE, output="file:///o")
    first = wf.step("m", "true")
    early = first.gather()
    later = [wf.step("m", "true") for _ in range(3)]
    assert list(early) == [first]
    assert list(later[0].gather()) == [first, *later]


def test_inputs_from_handles_are_folders_and_dependencies():
    wf = Workflow("wf", server=NOWHERE, output="file:///o")
    m0 = wf.step("m", "true")
    m1 = wf.step("m", "true", output="file:///elsewhere")     # no trailing slash given
    r = wf.step("r", "true", inputs=["s3://b/k|gunzip", m0.gather(), m1])
    assert r.inputs == ["s3://b/k|gunzip", m0, m1, m1]
    assert r.deps == [m0, m1]       # reading an output waits for it, once per task
    d = wf.step("d", "true", depends_on=[m1, m0.gather()])
    assert d.deps == [m1, m0] and d.inputs == []


@pytest.mark.parametrize("call, message", [
    (lambda wf, h: wf.step("s", ""), "non-empty"),
    (lambda wf, h: wf.step("s", "   "), "non-empty"),
    (lambda wf, h: wf.step("s", None), "non-empty"),
    (lambda wf, h: wf.step("bad name", "true"), "invalid step name"),
    (lambda wf, h: wf.step("s", "true", depends_on=[42]), "got int"),
    (lambda wf, h: wf.step("s", "true", depends_on="m-0"), "got str"),
    (lambda wf, h: wf.step("s", "true", inputs=[Path("/x")]), "got PosixPath"),
    (lambda wf, h: wf.step("s", "true", depends_on=Workflow("other", server=NOWHERE).step("o", "true")),
     "of workflow 'other'"),
    (lambda wf, h: wf.step("s", "true", inputs=Workflow("other", server=NOWHERE).step("o", "true")),
     "of workflow 'other'"),
    (lambda wf, h: wf.step("m", "true", depends_on=h), "same step"),
    (lambda wf, h: wf.step("m", "true", concurrency=0), "positive integer"),
    (lambda wf, h: wf.step("m", "true", concurrency=3), "contradicts"),
])
def test_bad_use_is_one_clear_value_error(call, message):
    wf = Workflow("wf", server=NOWHERE, output="file:///o")
    handle = wf.step("m", "true", concurrency=2)
    with pytest.raises(ValueError, match=message) as err:
        call(wf, handle)
    assert "\n" not in str(err.value)
    assert len(wf.steps["m"].tasks) == 1 and list(wf.steps) == ["m"]   # nothing half-added


def test_an_input_without_output_and_a_cycle_between_steps_are_refused():
    wf = Workflow("wf", server=NOWHERE)                 # no output base
    a = wf.step("a", "true")
    with pytest.raises(ValueError, match="has no output"):
        wf.step("b", "true", inputs=a)
    b = wf.step("b", "true", depends_on=a)
    with pytest.raises(ValueError, match="cycle"):
        wf.step("a", "true", depends_on=b)
    with pytest.raises(ValueError, match="invalid workflow name"):
        Workflow("a/b", server=NOWHERE)


def test_the_example_says_what_went_wrong_and_exits_1(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("mapreduce", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--server", NOWHERE, "--workdir", str(tmp_path), "--files", "3"]) == 1
    assert "cannot reach the scitq server" in capsys.readouterr().err
    assert len(list((tmp_path / "in").iterdir())) == 3


# --- submitting to a real server (no worker) ----------------------------------------------

def test_submission_stores_dependencies_inputs_and_options(live):
    wf = Workflow("wc", server=live, output="file:///tmp/wc-out", retries=1, timeout=30)
    maps, cleans = [], []
    for i in range(3):
        maps.append(wf.step("map", f"echo {i} > $OUTPUT/p{i}", inputs=[f"file:///in/{i}.txt"],
                            concurrency=2))
        cleans.append(wf.step("clean", "cp $INPUT/* $OUTPUT/", inputs=maps[-1], retries=3))
    red = wf.step("reduce", "cat $INPUT/*", inputs=cleans[0].gather(), depends_on=maps[0],
                  task_name="total", output="file:///tmp/total/")
    # "early" is declared before "late", which one of its iterations needs: it is
    # submitted after it all the same.
    early = wf.step("early", "true", depends_on=red.gather())
    late = wf.step("late", "true", depends_on=[])
    early2 = wf.step("early", "true", depends_on=late)

    ids = wf.submit()
    assert ids == {"map": [m.id for m in maps], "clean": [c.id for c in cleans],
                   "reduce": [red.id], "early": [early.id, early2.id], "late": [late.id]}
    assert wf.submit() == ids                    # nothing sent twice
    assert live.batch("wc.map")["counts"]["total"] == 3

    m0 = live.task(maps[0].id)
    assert (m0["batch"], m0["name"], m0["status"]) == ("wc.map", "map-0", "pending")
    assert m0["inputs"] == ["file:///in/0.txt"] and m0["output"] == "file:///tmp/wc-out/map/0/"
    assert (m0["retries"], m0["timeout"]) == (1, 30)
    c1 = live.task(cleans[1].id)
    assert c1["status"] == "waiting" and c1["retries"] == 3
    assert c1["inputs"] == ["file:///tmp/wc-out/map/1/"]
    assert c1["depends_on"] == [maps[1].id]
    r = live.task(red.id)
    assert r["name"] == "total" and r["output"] == "file:///tmp/total/"
    assert r["inputs"] == [f"file:///tmp/wc-out/clean/{i}/" for i in range(3)]
    assert sorted(r["depends_on"]) == sorted([maps[0].id] + [c.id for c in cleans])
    assert live.task(early.id)["depends_on"] == [red.id]
    assert live.task(early2.id)["depends_on"] == [late.id]
    assert live.batch("wc.map")["concurrency"] == 2
    assert live.batch("wc.clean")["concurrency"] is None

    with pytest.raises(ValueError, match="submitted already"):
        wf.step("map", "true")
    # A second workflow of the same name would mix its tasks into these batches.
    again = Workflow("wc", server=live)
    again.step("map", "true")
    with pytest.raises(Conflict, match="wc.map already holds 3"):
        again.submit()

    wf.clean()
    for batch in wf.batches:
        with pytest.raises(NotFound):
            live.batch(batch)
    wf.clean()                                   # gone already: fine
    assert not any(b["name"].startswith("wc.") for b in live.batches())


def test_concurrency_on_a_batch_made_beforehand(live):
    live.create_batch("pre.s")                   # empty: the workflow may use it
    wf = Workflow("pre", server=live)
    wf.step("s", "true", concurrency=5)
    wf.submit()
    assert live.batch("pre.s")["concurrency"] == 5


# --- running, with a worker ------------------------------------------------------------

def test_run_waits_once_and_failures_name_steps_and_tasks(live, procs):
    procs.worker(live.url, "w", 4)
    wf = Workflow("ok", server=live)
    a = wf.step("a", "echo a")
    wf.step("b", "echo b", depends_on=a)
    counts = wf.run(refresh=0.2, progress=False, timeout=60)
    assert {k: (c["succeeded"], c["total"]) for k, c in counts.items()} == {"a": (1, 1), "b": (1, 1)}
    assert wf.run(refresh=0.2, progress=False, timeout=10) == counts    # not submitted again

    bad = Workflow("bad", server=live)
    x = bad.step("x", "exit 3")
    bad.step("x", "true")
    bad.step("y", "echo never", depends_on=x)
    bad.step("z", "true", depends_on=x.gather())
    with pytest.raises(WorkflowFailed) as err:
        bad.run(refresh=0.2, progress=False, timeout=60)
    msg = str(err.value)
    assert f"x: 1 failed (tasks {x.id})" in msg and "y: 0 failed" in msg and "z: 0 failed" in msg
    assert err.value.failed == {"x": [x.id], "y": [], "z": []}
    assert err.value.counts["y"]["canceled"] == 1 and err.value.counts["x"]["succeeded"] == 1


# --- the example end to end ------------------------------------------------------------

def _times(execution):
    return datetime.fromisoformat(execution["started_at"]), datetime.fromisoformat(execution["ended_at"])


def test_mapreduce_example_end_to_end(live, procs, tmp_path):
    procs.worker(live.url, "w1", 4)
    run = subprocess.run([sys.executable, str(EXAMPLE), "--server", live.url,
                          "--workdir", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok: 101 tasks over 50 files")

    expected = Counter()
    for path in sorted((tmp_path / "in").iterdir()):
        expected.update(w.lower() for w in path.read_text().split() if len(w) >= 3)
    assert len(list((tmp_path / "in").iterdir())) == 50
    total = (tmp_path / "out" / "total.txt").read_text()
    assert total == "".join(f"{w}\t{n}\n" for w, n in sorted(expected.items()))

    batches = {b["name"]: b["counts"] for b in live.batches()}
    assert {name: (c["succeeded"], c["total"]) for name, c in batches.items()
            if name.startswith("mapreduce.")} == {
        "mapreduce.map": (50, 50), "mapreduce.combine": (50, 50), "mapreduce.reduce": (1, 1)}

    tasks = {t["name"]: t for b in ("mapreduce.map", "mapreduce.combine", "mapreduce.reduce")
             for t in live.iter_tasks(batch=b)}
    runs = {name: _times(live.task(t["id"])["executions"][-1]) for name, t in tasks.items()}
    for n in range(50):
        assert runs[f"combine-{n}"][0] >= runs[f"map-{n}"][1], n
    assert runs["reduce-0"][0] >= max(runs[f"combine-{n}"][1] for n in range(50))
