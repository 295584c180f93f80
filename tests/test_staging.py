"""staging: post-actions, collisions, the deadline, the resource cache, outputs (the URI
grammar: test_taskspec.py)."""
import gzip
import hashlib
import http.server
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from scitq.errors import StagingError
from scitq.worker import staging, storage
from test_storage import BIG, s3, tree  # noqa: F401 (s3: a fixture)


def make_tar(path, members, mode="w:gz"):
    """A tar of {name: bytes}; a value given as ("symlink", target) is a symlink."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def gz(path, data):
    path.write_bytes(gzip.compress(data))
    return path


def f(path):
    return f"file://{path}"


# --- post-actions ----------------------------------------------------------------------------

def test_gunzip(tmp_path):
    gz(tmp_path / "reads.fq.gz", b"@r1\nACGT\n")
    staging.stage_inputs([f(tmp_path / "reads.fq.gz") + "|gunzip"], tmp_path / "in")
    assert tree(tmp_path / "in") == {"reads.fq": b"@r1\nACGT\n"}


def test_untar_of_a_tar_gz(tmp_path):
    make_tar(tmp_path / "ref.tar.gz", {"ref/genome.fa": b">chr1\nACGT\n", "ref/idx/a.bin": BIG,
                                       "ref/link": ("symlink", "genome.fa")})
    staging.stage_inputs([f(tmp_path / "ref.tar.gz") + "|untar"], tmp_path / "in")
    assert tree(tmp_path / "in") == {"ref/genome.fa": b">chr1\nACGT\n", "ref/idx/a.bin": BIG,
                                     "ref/link": b">chr1\nACGT\n"}
    assert os.readlink(tmp_path / "in/ref/link") == "genome.fa"


def test_unzip(tmp_path):
    make_zip(tmp_path / "a.zip", {"a/b.txt": b"bee", "top.txt": b"top"})
    staging.stage_inputs([f(tmp_path / "a.zip") + "|unzip"], tmp_path / "in")
    assert tree(tmp_path / "in") == {"a/b.txt": b"bee", "top.txt": b"top"}


def test_mv_and_chains(tmp_path):
    gz(tmp_path / "x.fq.gz", b"reads")
    make_tar(tmp_path / "t.tar", {"one.txt": b"1", "d/two.txt": b"2"}, mode="w")
    gz(tmp_path / "t2.tar.gz", (tmp_path / "t.tar").read_bytes())
    make_zip(tmp_path / "a.zip", {"z.txt": b"zed"})
    files = staging.stage_inputs([
        f(tmp_path / "x.fq.gz") + "|gunzip|mv:sub/dir",
        f(tmp_path / "t2.tar.gz") + "|gunzip|untar|mv:ref",
        f(tmp_path / "a.zip") + "|unzip|mv:ref/zipped",
        f(tmp_path / "t.tar") + "|mv:raw",
    ], tmp_path / "in")
    expected = {"sub/dir/x.fq": b"reads", "ref/one.txt": b"1", "ref/d/two.txt": b"2",
                "ref/zipped/z.txt": b"zed", "raw/t.tar": (tmp_path / "t.tar").read_bytes()}
    assert tree(tmp_path / "in") == expected
    assert sorted(p.relative_to(tmp_path / "in").as_posix() for p in files) == sorted(expected)
    assert [p.name for p in (tmp_path / "in").iterdir() if p.name.startswith(".")] == []


def test_actions_on_a_folder(tmp_path):
    (tmp_path / "src/lane2").mkdir(parents=True)
    gz(tmp_path / "src/lane1.fq.gz", b"L1")
    gz(tmp_path / "src/lane2/r.fq.gz", b"L2")
    (tmp_path / "src/README").write_bytes(b"kept as is")
    staging.stage_inputs([f(tmp_path / "src") + "/|gunzip"], tmp_path / "in")
    assert tree(tmp_path / "in") == {"lane1.fq": b"L1", "lane2/r.fq": b"L2", "README": b"kept as is"}


@pytest.mark.parametrize("members", [
    {"ok.txt": b"fine", "../evil.txt": b"escape"},
    {"/abs-evil.txt": b"absolute"},
    {"ok.txt": b"fine", "bad": ("symlink", "/etc/passwd")},
    {"bad": ("symlink", "../../evil.txt")},
], ids=["dotdot", "absolute", "absolute-link", "escaping-link"])
def test_unsafe_tar_refused(tmp_path, members):
    make_tar(tmp_path / "evil.tar.gz", members)
    with pytest.raises(StagingError, match="unsafe member") as err:
        staging.stage_inputs([f(tmp_path / "evil.tar.gz") + "|untar"], tmp_path / "a/in")
    assert err.value.reason == "staging"
    assert not (tmp_path / "a/evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/abs-evil.txt").exists()
    assert os.listdir(tmp_path / "a/in") == []                  # its stage dir is gone too


@pytest.mark.parametrize("name", ["../evil.txt", "/abs-evil.txt", "C:/evil.txt"])
def test_unsafe_zip_refused(tmp_path, name):
    make_zip(tmp_path / "evil.zip", {"ok.txt": b"ok", name: b"escape"})
    with pytest.raises(StagingError, match="unsafe member"):
        staging.stage_inputs([f(tmp_path / "evil.zip") + "|unzip"], tmp_path / "a/in")
    assert not (tmp_path / "a/evil.txt").exists() and os.listdir(tmp_path / "a/in") == []


def test_action_with_nothing_to_act_on(tmp_path):
    (tmp_path / "plain.txt").write_bytes(b"plain")
    with pytest.raises(StagingError, match=r"\|gunzip: no \.gz file"):
        staging.stage_inputs([f(tmp_path / "plain.txt") + "|gunzip"], tmp_path / "in")
    gz(tmp_path / "broken.gz", b"x")
    (tmp_path / "broken.gz").write_bytes((tmp_path / "broken.gz").read_bytes()[:8])
    with pytest.raises(StagingError, match=r"\|gunzip: ") as err:
        staging.stage_inputs([f(tmp_path / "broken.gz") + "|gunzip"], tmp_path / "in2")
    assert "\n" not in err.value.message


# --- collisions -----------------------------------------------------------------------------

def test_two_inputs_giving_one_name(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.txt").write_bytes(d.encode())
    a, b = f(tmp_path / "a/x.txt"), f(tmp_path / "b/x.txt")
    with pytest.raises(StagingError) as err:
        staging.stage_inputs([a, b], tmp_path / "in")
    assert err.value.message == f"inputs {a} and {b} both give file x.txt; use |mv:DIR"
    assert tree(tmp_path / "in") == {"x.txt": b"a"}            # the first one, not overwritten
    staging.stage_inputs([a, b + "|mv:b"], tmp_path / "in2")
    assert tree(tmp_path / "in2") == {"x.txt": b"a", "b/x.txt": b"b"}


def test_folders_merge_but_files_do_not(tmp_path):
    make_tar(tmp_path / "1.tar.gz", {"ref/a.txt": b"a"})
    make_tar(tmp_path / "2.tar.gz", {"ref/b.txt": b"b"})
    make_tar(tmp_path / "3.tar.gz", {"ref": b"a file where a dir is"})
    staging.stage_inputs([f(tmp_path / "1.tar.gz") + "|untar", f(tmp_path / "2.tar.gz") + "|untar"],
                         tmp_path / "in")
    assert tree(tmp_path / "in") == {"ref/a.txt": b"a", "ref/b.txt": b"b"}
    with pytest.raises(StagingError, match="both give file ref;"):
        staging.stage_inputs([f(tmp_path / "1.tar.gz") + "|untar", f(tmp_path / "3.tar.gz") + "|untar"],
                             tmp_path / "in2")


def test_the_server_can_import_it_cheaply():
    code = ("import sys, scitq.worker.staging as s; s.check_uri('s3://b/k|untar');"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the deadline -------------------------------------------------------------------------------

class SlowHandler(http.server.BaseHTTPRequestHandler):
    """/trickle sends 1 MB a few bytes at a time; /stall answers nothing for a while."""

    def do_GET(self):
        if self.path == "/stall":
            time.sleep(3)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(60):
                self.wfile.write(b"x" * 1000)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_site():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("path", ["/trickle", "/stall"])
def test_deadline(slow_site, tmp_path, path):
    start = time.monotonic()
    with pytest.raises(StagingError) as err:
        staging.stage_inputs([slow_site + path + "|mv:x"], tmp_path / "in", deadline=start + 0.5)
    assert err.value.reason == "staging_timeout"
    assert "deadline" in err.value.message
    assert time.monotonic() - start < 2
    assert os.listdir(tmp_path / "in") == []                    # no half file, no stage dir


# --- the resource cache ---------------------------------------------------------------------------

def put_tar(client, bucket, key, members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    client.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def test_resource_cache(s3, tmp_path):
    client, bucket = s3
    put_tar(client, bucket, "ref.tar.gz", {"ref/genome.fa": b"v1 genome", "ref/idx/a.bin": BIG})
    spec = f"s3://{bucket}/ref.tar.gz|untar"
    cache = staging.ResourceCache(tmp_path / "cache")

    # 20 tasks at once: one download, every task gets the files
    barrier = threading.Barrier(20)
    errors = []

    def task(i):
        try:
            barrier.wait()
            cache.prepare([spec], tmp_path / f"task{i}")
        except Exception as exc:     # noqa: BLE001 (reported below)
            errors.append(exc)
    threads = [threading.Thread(target=task, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.downloads == 1
    for i in range(20):
        assert tree(tmp_path / f"task{i}") == {"ref/genome.fa": b"v1 genome", "ref/idx/a.bin": BIG}

    # a farm of hard links to read-only files in read-only dirs
    copy = tmp_path / "cache" / hashlib.sha256(spec.encode()).hexdigest()
    linked, cached = tmp_path / "task0/ref/genome.fa", copy / "ref/genome.fa"
    assert linked.stat().st_ino == cached.stat().st_ino
    assert stat.S_IMODE(linked.stat().st_mode) == 0o444
    assert stat.S_IMODE((tmp_path / "task0/ref/idx/a.bin").stat().st_mode) == 0o444
    assert {stat.S_IMODE(p.stat().st_mode) for p in [copy, copy / "ref", copy / "ref/idx"]} == {0o555}

    # unchanged: no new download
    cache.prepare([spec], tmp_path / "again")
    assert cache.downloads == 1 and tree(tmp_path / "again")["ref/genome.fa"] == b"v1 genome"

    # the source changes: fetched again, the old farm still whole
    put_tar(client, bucket, "ref.tar.gz", {"ref/genome.fa": b"v2 genome"})
    cache.prepare([spec], tmp_path / "later")
    assert cache.downloads == 2
    assert tree(tmp_path / "later") == {"ref/genome.fa": b"v2 genome"}
    assert tree(tmp_path / "task0") == {"ref/genome.fa": b"v1 genome", "ref/idx/a.bin": BIG}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == \
        sorted([copy.name, copy.name + ".fingerprint"])        # the old copy and temp dirs are gone

    # a new cache on the same root (a restarted worker) reuses what is there
    again = staging.ResourceCache(tmp_path / "cache")
    again.prepare([spec], tmp_path / "restarted")
    assert again.downloads == 0 and tree(tmp_path / "restarted") == {"ref/genome.fa": b"v2 genome"}


def test_two_resources_giving_one_name(s3, tmp_path):
    client, bucket = s3
    client.put_object(Bucket=bucket, Key="a/db.txt", Body=b"a")
    client.put_object(Bucket=bucket, Key="b/db.txt", Body=b"b")
    cache = staging.ResourceCache(tmp_path / "cache")
    with pytest.raises(StagingError, match="resources s3://.*/a/db.txt and s3://.*/b/db.txt both give "
                                           r"file db.txt; use \|mv:DIR"):
        cache.prepare([f"s3://{bucket}/a/db.txt", f"s3://{bucket}/b/db.txt"], tmp_path / "res")
    cache.prepare([f"s3://{bucket}/a/db.txt", f"s3://{bucket}/b/db.txt|mv:b"], tmp_path / "res2")
    assert tree(tmp_path / "res2") == {"db.txt": b"a", "b/db.txt": b"b"}


def test_resource_from_a_missing_source(s3, tmp_path):
    _, bucket = s3
    cache = staging.ResourceCache(tmp_path / "cache")
    with pytest.raises(StagingError, match=f"cannot download s3://{bucket}/nope.tar.gz"):
        cache.prepare([f"s3://{bucket}/nope.tar.gz|untar"], tmp_path / "res")
    assert cache.downloads == 0


# --- outputs ---------------------------------------------------------------------------------------

def test_outputs_round_trip(s3, tmp_path):
    client, bucket = s3
    out = tmp_path / "OUTPUT"
    (out / "per_sample/s1").mkdir(parents=True)
    (out / "summary.tsv").write_bytes(b"s1\t42\n")
    (out / "per_sample/s1/aln.bam").write_bytes(BIG)
    (out / "per_sample/s1/empty.log").write_bytes(b"")
    assert staging.upload_outputs(out, f"s3://{bucket}/run1") == 3
    storage.fetch(f"s3://{bucket}/run1/", tmp_path / "back")
    assert tree(tmp_path / "back") == tree(out)

    # a cached result reused under another output URI
    (tmp_path / "work").mkdir()
    copied = staging.copy_outputs(f"s3://{bucket}/run1", f"file://{tmp_path}/copy/", tmp_path / "work")
    assert copied == 3 and tree(tmp_path / "copy") == tree(out)
    assert os.listdir(tmp_path / "work") == []


def test_failed_upload_says_upload(s3, tmp_path):
    (tmp_path / "OUTPUT").mkdir()
    (tmp_path / "OUTPUT/x").write_bytes(b"x")
    with pytest.raises(StagingError) as err:
        staging.upload_outputs(tmp_path / "OUTPUT", "s3://no-such-bucket-here/out/")
    assert err.value.reason == "upload"
    assert err.value.message.startswith("cannot upload to s3://no-such-bucket-here/out/: ")
    with pytest.raises(StagingError) as err:
        staging.upload_outputs(tmp_path / "OUTPUT", "s3://b/out|gunzip")
    assert err.value.reason == "upload" and "takes no action" in err.value.message
