"""Execution output: append-only files under the server's data dir, read by byte offset.

Output never goes into the database: a task may print gigabytes. Appends are
idempotent by offset, so a worker that retries a chunk it is unsure of loses nothing
and writes nothing twice.
"""
import contextlib
import errno
import logging
import os
import shutil
import threading
from pathlib import Path

from scitq.errors import BadRequest, Conflict, ScitqError

STREAMS = ("stdout", "stderr")

log = logging.getLogger(__name__)


class NoSpace(ScitqError):
    """The disk of the outputs is full: nothing was acknowledged, so the worker keeps the
    bytes and sends them again (it retries 5xx answers)."""

    http_status = 507


class OutputStore:
    """Append-only byte streams of numbered objects: executions' stdout and stderr, jobs' log."""

    def __init__(self, root, streams=STREAMS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._root = str(self.root)
        self.streams = streams
        self._locks = [threading.Lock() for _ in range(64)]

    def path(self, execution_id, stream):
        return Path(self._file(execution_id, stream))

    def _file(self, execution_id, stream):
        """The file's path as text: pathlib's objects cost more than the stat of size()
        (which runs twice for each execution that ends)."""
        if stream not in self.streams:
            raise BadRequest(f"unknown stream {stream!r}: use {' or '.join(self.streams)}")
        return f"{self._root}/{execution_id // 1000}/{execution_id}.{stream}"

    def size(self, execution_id, stream):
        try:
            return os.stat(self._file(execution_id, stream)).st_size
        except FileNotFoundError:
            return 0

    def append(self, execution_id, stream, offset, data):
        """Write `data` at `offset`; returns the new size.

        A chunk already fully stored (a retry) is acknowledged without writing; a chunk
        that starts past the end would leave a hole, so it is refused.
        """
        path = self.path(execution_id, stream)
        with self._locks[execution_id % len(self._locks)]:
            size = self.size(execution_id, stream)
            if offset > size:
                raise Conflict(f"output of execution {execution_id} has {size} bytes of {stream}; "
                               f"a chunk at offset {offset} would leave a gap", {"size": size})
            skip = size - offset
            if skip >= len(data):
                return size
            with self._space():
                with _append(path) as f:
                    f.write(memoryview(data)[skip:])
            return size + len(data) - skip

    def extend(self, object_id, stream, data):
        """Append at the end (for what the server writes itself, such as job logs)."""
        path = self.path(object_id, stream)
        with self._locks[object_id % len(self._locks)]:
            with _append(path) as f:
                f.write(data)

    @contextlib.contextmanager
    def _space(self):
        """A full disk is a 507 that says so (a partial write is completed by the retry:
        appends go by offset)."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("no space left for outputs under %s: %s", self.root, exc)
            raise NoSpace(f"no space left on the server's disk for outputs ({self.root}): "
                          "send it again later") from exc

    def read(self, execution_id, stream, offset=0, limit=1 << 20):
        """Up to `limit` bytes from `offset`, and the stream's current size."""
        path = self.path(execution_id, stream)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset >= size:      # past the end (a seek there may be refused: EINVAL)
                    return b"", size
                f.seek(offset)
                return f.read(limit), size
        except FileNotFoundError:
            return b"", 0

    def copy(self, source_id, target_id):
        """Give target the streams of source (a result reused from the cache)."""
        for stream in self.streams:
            src, dst = self.path(source_id, stream), self.path(target_id, stream)
            if src.exists():
                with open(src, "rb") as f, _append(dst, truncate=True) as g:
                    shutil.copyfileobj(f, g)

    def delete(self, execution_ids):
        for eid in execution_ids:
            for stream in self.streams:
                self.path(eid, stream).unlink(missing_ok=True)

    def free_bytes(self):
        return shutil.disk_usage(self.root).free


def _append(path, truncate=False):
    """`path` open to append, made mode 0600 in a 0700 directory: outputs are no other
    local user's to read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    return os.fdopen(os.open(path, flags, 0o600), "wb" if truncate else "ab")
