"""The task-spec grammar client, server and worker share: URIs with their post-actions, and
container options."""
import pytest

from scitq.taskspec import check_uri, parse_options, parse_uri

G = 1024 ** 3


# --- URIs ----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, parsed", [
    ("s3://b/ref.tar.gz|untar", ("s3://b/ref.tar.gz", [("untar", None)])),
    ("https://x.org/y.fq.gz|gunzip", ("https://x.org/y.fq.gz", [("gunzip", None)])),
    ("file:///data/a.zip|unzip|mv:ref", ("file:///data/a.zip", [("unzip", None), ("mv", "ref")])),
    ("azure://c/runs/|mv:a/b/", ("azure://c/runs/", [("mv", "a/b")])),
    ("http://127.0.0.1:8000/d/", ("http://127.0.0.1:8000/d/", [])),
    ("s3://bucket/", ("s3://bucket/", [])),
])
def test_check_uri_accepts(spec, parsed):
    assert check_uri(spec) == parsed
    assert parse_uri(spec) == parsed


@pytest.mark.parametrize("spec, message", [
    ("ftp://h/x", "unknown scheme ftp://"),
    ("/data/x", "not a URI"),
    ("s3://b/x|explode", "unknown action |explode"),
    ("s3://b/x|mv:", "|mv: needs a relative dir"),
    ("s3://b/x|mv:../up", "|mv: needs a relative dir"),
    ("s3://b/x|mv:/abs", "|mv: needs a relative dir"),
    ("s3://b/x|mv:a/../../b", "|mv: needs a relative dir"),
    ("s3://b/x\0y", "NUL"),
    ("s3://b/" + "k" * 4100, "longer than 4096"),
    ("s3://bucket", "expected s3://bucket/path"),
    ("azure://container", "expected azure://container/path"),
    ("file://relative/path", "absolute path"),
    ("https:///nohost", "no host"),
    ("https://h.org", "no file name"),
])
def test_check_uri_refuses(spec, message):
    with pytest.raises(ValueError) as err:
        check_uri(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_output_uris_take_no_action():
    assert check_uri("s3://b/out", actions=False) == ("s3://b/out", [])
    assert check_uri("https://h.org", actions=False) == ("https://h.org", [])
    with pytest.raises(ValueError, match="an output URI takes no action"):
        check_uri("s3://b/out|gunzip", actions=False)
    with pytest.raises(ValueError, match="unknown scheme"):
        check_uri("gs://b/out", actions=False)


# --- container options ---------------------------------------------------------------

@pytest.mark.parametrize("options, kwargs", [
    (None, {}),
    ("", {}),
    ("-e FOO=1 --env BAR=2 --env=BAZ='a b'",
     {"environment": {"FOO": "1", "BAR": "2", "BAZ": "a b"}}),
    ("-v /data:/data:ro --volume=/ref:/ref", {"volumes": ["/data:/data:ro", "/ref:/ref"]}),
    ("--gpus all", {"device_requests": [{"count": -1, "capabilities": [["gpu"]]}]}),
    ("--gpus 2", {"device_requests": [{"count": 2, "capabilities": [["gpu"]]}]}),
    ("--gpus device=0,1", {"device_requests": [{"count": 0, "capabilities": [["gpu"]],
                                                "device_ids": ["0", "1"]}]}),
    ("--shm-size 2g", {"shm_size": 2 * G}),
    ("-u 1000:1000 -w /work", {"user": "1000:1000", "working_dir": "/work"}),
    ("--entrypoint ''", {"entrypoint": [""]}),
    ("--cpus 2 --memory 4g", {"nano_cpus": 2_000_000_000, "mem_limit": 4 * G}),
    ("--cpus=0.5 -m 512m", {"nano_cpus": 500_000_000, "mem_limit": 512 * 1024 ** 2}),
    ("--network host", {"network_mode": "host"}),
    ("--net=none", {"network_mode": "none"}),
    ("--privileged", {"privileged": True}),
    ("--privileged=false --rm", {"privileged": False}),
    ("--cap-add SYS_ADMIN --cap-add NET_ADMIN --device /dev/fuse",
     {"cap_add": ["SYS_ADMIN", "NET_ADMIN"], "devices": ["/dev/fuse"]}),
    ("--ulimit nofile=1024:2048 --tmpfs /scratch:size=1g --label team=bio",
     {"ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}],
      "tmpfs": {"/scratch": "size=1g"}, "labels": {"team": "bio"}}),
])
def test_options_accepted(options, kwargs):
    assert parse_options(options) == kwargs


def test_an_env_name_alone_takes_its_value_from_the_given_environment():
    assert parse_options("-e A -e B -e C=3", environ={"A": "1"}) == {"environment": {"A": "1", "C": "3"}}
    assert parse_options("-e A") == {}          # the server's check: no environment given


@pytest.mark.parametrize("options, message", [
    ("--foo", "unsupported container option '--foo': supported are "),
    ("--foo=1", "unsupported container option '--foo': supported are "),
    ("-d", "unsupported container option '-d': supported are "),
    ("-it", "unsupported container option '-i': supported are "),
    ("--name x", "unsupported container option '--name': supported are "),
    ("-v /x:/input", "container option '-v': mount point '/input': "),
    ("-v /x:/tmp/sub:ro", "container option '-v': mount point '/tmp/sub': "),
    ("--volume=/x:/resource/", "container option '--volume': mount point '/resource': "),
    ("-v /x:/output/../output", "container option '-v': mount point '/output': "),
    ("--tmpfs /tmp", "container option '--tmpfs': tmpfs '/tmp': "),
    ("-v /x", "container option '-v': expected HOST:CONTAINER[:MODE]"),
    ("-v /x:/y:bogus", "container option '-v': unknown mount mode 'bogus'"),
    ("--cpus abc", "container option '--cpus': expected a positive number"),
    ("--memory lots", "container option '--memory': expected a size"),
    ("--gpus", "container option '--gpus' needs a value"),
    ("--gpus some", "container option '--gpus': expected all, a count"),
    ("--privileged=maybe", "container option '--privileged' takes true or false"),
    ("--label scitq=0", "container option '--label': expected NAME=VALUE (not scitq)"),
    ("ubuntu", "unexpected argument 'ubuntu' in container options"),
    ("-e 'FOO=1", "container options \"-e 'FOO=1\": No closing quotation"),
])
def test_options_refused(options, message):
    with pytest.raises(ValueError) as exc:
        parse_options(options)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)
