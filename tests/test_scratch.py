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
