"""OutputStore on its own: append-only output files read and written by byte offset."""
import threading

import pytest

from scitq.errors import BadRequest, Conflict
from scitq.server.outputs import OutputStore

EID = 1234          # an execution id (the store never looks at the database)


@pytest.fixture
def store(tmp_path):
    return OutputStore(tmp_path / "outputs")


def written(store, eid=EID, stream="stdout"):
    """Everything stored for the stream, read straight from its file."""
    path = store.path(eid, stream)
    return path.read_bytes() if path.exists() else b""


def test_append_at_offset(store):
    assert store.append(EID, "stdout", 0, b"hello ") == 6
    assert store.append(EID, "stdout", 6, b"world\n") == 12
    assert written(store) == b"hello world\n"
    assert store.size(EID, "stdout") == 12
    assert store.size(EID, "stderr") == 0 and written(store, stream="stderr") == b""


def test_streams_and_executions_are_separate(store):
    store.append(EID, "stdout", 0, b"out")
    store.append(EID, "stderr", 0, b"error")
    store.append(EID + 1, "stdout", 0, b"other")
    assert [written(store, EID, "stdout"), written(store, EID, "stderr"),
            written(store, EID + 1, "stdout")] == [b"out", b"error", b"other"]


def test_retry_of_stored_chunk_is_a_no_op(store):
    store.append(EID, "stdout", 0, b"abc")
    store.append(EID, "stdout", 3, b"def")
    assert store.append(EID, "stdout", 3, b"def") == 6
    assert store.append(EID, "stdout", 0, b"abc") == 6
    assert store.append(EID, "stdout", 6, b"") == 6
    assert written(store) == b"abcdef"


def test_overlapping_chunk_appends_only_its_new_tail(store):
    store.append(EID, "stdout", 0, b"abcd")
    assert store.append(EID, "stdout", 2, b"cdEF") == 6
    assert written(store) == b"abcdEF"
    assert store.append(EID, "stdout", 0, b"abcdEFGH") == 8
    assert written(store) == b"abcdEFGH"


def test_racing_retries_write_each_byte_once(store):
    chunks = [bytes([65 + i % 26]) * 1000 for i in range(50)]

    def send_all():
        offset = 0
        for c in chunks:
            store.append(EID, "stdout", offset, c)
            offset += len(c)

    senders = [threading.Thread(target=send_all) for _ in range(4)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    assert written(store) == b"".join(chunks)


def test_chunk_past_the_end_is_a_conflict(store):
    store.append(EID, "stdout", 0, b"abc")
    with pytest.raises(Conflict) as err:
        store.append(EID, "stdout", 4, b"gap")
    assert err.value.http_status == 409 and err.value.detail == {"size": 3}
    with pytest.raises(Conflict):
        store.append(EID + 1, "stdout", 1, b"nothing before")
    assert written(store) == b"abc" and written(store, EID + 1) == b""


def test_read_from_any_offset_with_limit(store):
    data = bytes(range(256)) * 4
    store.append(EID, "stdout", 0, data)
    assert store.read(EID, "stdout") == (data, 1024)
    assert store.read(EID, "stdout", 100, 10) == (data[100:110], 1024)
    assert store.read(EID, "stdout", 1020, 10) == (data[1020:], 1024)
    assert store.read(EID, "stdout", 1024) == (b"", 1024)
    assert store.read(EID, "stdout", 5000, 10) == (b"", 1024)
    assert store.read(EID, "stderr") == (b"", 0)
    assert store.read(999, "stdout", 0, 10) == (b"", 0)


@pytest.mark.parametrize("stream", ["stdin", "", "../stdout", None])
def test_unknown_stream_is_a_bad_request(store, stream):
    for action in (lambda: store.append(EID, stream, 0, b"x"),
                   lambda: store.read(EID, stream),
                   lambda: store.path(EID, stream)):
        with pytest.raises(BadRequest):
            action()
    assert not any(store.root.rglob("*"))


def test_delete_removes_files(store):
    for eid in (EID, EID + 1, EID + 2):
        store.append(eid, "stdout", 0, b"out")
    store.append(EID, "stderr", 0, b"err")
    store.delete([EID, EID + 1, 99999])          # an execution without output is fine
    assert not store.path(EID, "stdout").exists() and not store.path(EID, "stderr").exists()
    assert not store.path(EID + 1, "stdout").exists()
    assert written(store, EID + 2) == b"out"
    assert store.read(EID, "stdout") == (b"", 0)
    assert store.append(EID, "stdout", 0, b"new") == 3     # the stream starts over
