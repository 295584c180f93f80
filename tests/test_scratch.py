"""The worker's scratch directories: an execution's set is reused only when its task left
it empty and unchanged; anything left behind makes the whole set go."""
import os

from scitq.worker.process import DIRS, ScratchDirs


def test_an_empty_set_is_reused(tmp_path):
    scratch = ScratchDirs(tmp_path)
    root = scratch.take()
    assert sorted(os.listdir(root)) == sorted(DIRS)
    scratch.give_back(root)
    assert scratch.take() == root


def test_a_set_with_a_file_left_in_it_is_removed(tmp_path):
    scratch = ScratchDirs(tmp_path)
    root = scratch.take()
    (root / "temp" / "scratch").write_text("left behind")
    scratch.give_back(root)
    assert not root.exists()
    fresh = scratch.take()
    assert fresh != root and not any(os.listdir(fresh / name) for name in DIRS)


def test_a_set_changed_by_its_task_is_removed(tmp_path):
    scratch = ScratchDirs(tmp_path)
    for change in (lambda r: os.chmod(r / "output", 0o700), lambda r: (r / "extra").mkdir(),
                   lambda r: os.rmdir(r / "input")):
        root = scratch.take()
        change(root)
        scratch.give_back(root)
        assert not root.exists()


def test_only_so_many_sets_are_kept(tmp_path):
    scratch = ScratchDirs(tmp_path)
    scratch.keep = 2
    roots = [scratch.take() for _ in range(4)]
    for root in roots:
        scratch.give_back(root)
    assert len(scratch.free) == 2
    assert sum(root.exists() for root in roots) == 2


def test_a_prefetched_task_holds_no_set_until_it_starts(tmp_path):
    """Only the tasks staged or running hold directories: a worker prefetching hundreds of
    tasks makes no more sets than it runs at once (sets beyond `keep` are made and removed
    again for each task)."""
    import asyncio

    from scitq.worker.process import Execution

    async def scenario():
        scratch = ScratchDirs(tmp_path)
        reports = []
        waiting = [Execution({"execution_id": i, "task_id": i, "command": 'test -d "$TEMP"'}, None,
                             reports.append, tmp_path, 1, scratch=scratch) for i in range(100)]
        for ex in waiting:
            ex.stage()      # nothing to stage
        held = os.listdir(tmp_path)
        for ex in waiting[:3]:
            await ex.run()
        waiting[3].discard()
        return held, reports, scratch
    held, reports, scratch = asyncio.run(scenario())
    assert held == []
    assert [r["return_code"] for r in reports if r["status"] == "succeeded"] == [0, 0, 0]
    assert len(os.listdir(tmp_path)) == len(scratch.free) == 1       # one set, reused
