"""Credentials per server: `scitq login URL` keeps a token for that server alone, in a config
file of mode 600; the admin token of a data dir goes only to the server that owns it; an
authentication error names where its token came from."""
import os
import socket
import stat
import subprocess
import sys

import yaml

from procs import wait_until
from scitq.client import Client
from scitq.server import tls


def scitq(*args, env, input=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "scitq.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env, input=input, cwd=cwd)


def user_env(tmp_path, **extra):
    """A user of this machine with a config file of their own and no SCITQ_* setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}
    env["SCITQ_CONFIG"] = str(tmp_path / "user" / "config.yaml")
    env.update(extra)
    return env


def test_login_to_two_servers_each_gets_its_token(db_url, procs, tmp_path):
    """Acceptance 4: two servers with auth on two ports, `scitq login` to each: each command
    reaches its server with its token; a wrong token's error names its source."""
    one = procs.server(db_url, "--auth", data_dir=tmp_path / "one")
    two = procs.server(f"sqlite:///{tmp_path}/two.db", "--auth", data_dir=tmp_path / "two")
    tokens = {}
    for name, server in (("one", one), ("two", two)):
        admin = (server.data_dir / "admin.token").read_text().strip()
        with Client(server.url, token=admin) as c:
            tokens[name] = c.create_token(f"alice-{name}", "user")["token"]
    env = user_env(tmp_path)
    config = tmp_path / "user" / "config.yaml"

    first = scitq("login", one.url, "--token", tokens["one"], env=env)
    assert first.returncode == 0, first.stderr
    assert "(the default server)" in first.stderr
    second = scitq("login", two.url, env=env, input=tokens["two"] + "\n")    # asked, not in argv
    assert second.returncode == 0, second.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    kept = yaml.safe_load(config.read_text())
    assert kept["default"] == one.url
    assert {k: v["token"] for k, v in kept["servers"].items()} == {one.url: tokens["one"],
                                                                   two.url: tokens["two"]}
    assert all("ca" in v for v in kept["servers"].values())

    assert scitq("--server", two.url, "task", "add", "echo two", "-b", "b2", env=env).returncode == 0
    assert scitq("task", "add", "echo one", "-b", "b1", env=env).returncode == 0   # the default
    for server, batch in ((one, "b1"), (two, "b2")):
        listed = scitq("--server", server.url, "batch", "list", "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        assert [b["name"] for b in yaml.safe_load(listed.stdout)] == [batch]

    denied = scitq("token", "list", env=env)                # a user token: not for tokens
    assert denied.returncode == 2 and f"came from {config} ({one.url})" in denied.stderr

    # A wrong token is refused before it is kept; each source is named in the error.
    wrong = scitq("login", two.url, "--token", "scitq_not_a_real_token_at_all_x", env=env)
    assert wrong.returncode == 2 and "unknown or revoked token" in wrong.stderr
    assert "came from this login" in wrong.stderr
    assert yaml.safe_load(config.read_text())["servers"][two.url]["token"] == tokens["two"]
    bad_env = scitq("--server", one.url, "batch", "list", env={**env, "SCITQ_TOKEN": "scitq_wrong_wrong_wrong_wrong"})
    assert bad_env.returncode == 2 and "came from SCITQ_TOKEN" in bad_env.stderr
    bad_flag = scitq("--server", one.url, "--token", "scitq_wrong_wrong_wrong_wrong", "batch", "list", env=env)
    assert bad_flag.returncode == 2 and "came from --token" in bad_flag.stderr
    with Client(two.url, token=(two.data_dir / "admin.token").read_text().strip()) as c:
        c.revoke_token("alice-two")
    revoked = scitq("--server", two.url, "batch", "list", env=env)
    assert revoked.returncode == 2
    assert revoked.stderr.strip() == (f"error: unknown or revoked token (the token sent came "
                                      f"from {config} ({two.url}))")

    assert scitq("logout", two.url, env=env).returncode == 0
    assert two.url not in yaml.safe_load(config.read_text())["servers"]
    gone = scitq("--server", two.url, "batch", "list", env=env)
    assert gone.returncode == 2 and f"no token was sent: `scitq login {two.url}" in gone.stderr
    again = scitq("logout", two.url, env=env)
    assert again.returncode == 2 and again.stderr.startswith("error: no token kept for")


def test_a_data_dirs_admin_token_goes_to_its_own_server_alone(procs, tmp_path):
    """On the server's machine the CLI finds its admin.token, for that server only: another
    server on another port never receives it."""
    own = procs.server(f"sqlite:///{tmp_path}/own.db", "--auth", data_dir=tmp_path / "own")
    other = procs.server(f"sqlite:///{tmp_path}/other.db", "--auth", data_dir=tmp_path / "other")
    env = user_env(tmp_path, SCITQ_DATA_DIR=str(own.data_dir))
    mine = scitq("--server", own.url.replace("127.0.0.1", "localhost"), "batch", "list", env=env)
    assert mine.returncode == 0, mine.stderr
    theirs = scitq("--server", other.url, "batch", "list", env=env)
    assert theirs.returncode == 2
    assert "this server needs a token" in theirs.stderr and "no token was sent" in theirs.stderr
    # With no --server at all, the CLI goes to the server that owns the data dir.
    assert scitq("task", "add", "true", env=env).returncode == 0
    with Client(own.url, token=(own.data_dir / "admin.token").read_text().strip()) as c:
        assert c.tasks()["items"][0]["command"] == "true"


def test_login_keeps_the_ca_its_https_was_verified_with(procs, tmp_path):
    """`scitq --ca FILE login URL` verifies the server with that CA and keeps its absolute path
    for that server: later commands need no --ca; a wrong CA fails in one line, keeps nothing."""
    server = procs.server(f"sqlite:///{tmp_path}/db.sqlite", "--host", "0.0.0.0", "--auth",
                          data_dir=tmp_path / "srv")
    url = f"https://127.0.0.1:{server.url.rsplit(':', 1)[1]}"
    tls_dir = server.data_dir / "tls"
    with Client(url, token=(server.data_dir / "admin.token").read_text().strip(),
                ca=str(tls_dir / "ca.pem")) as c:
        token = c.create_token("alice", "user")["token"]
        c.add_task("true", batch="over-tls")
    tls.ensure_ca(tmp_path / "other")
    wrong_ca = str(tls.ca_path(tmp_path / "other"))
    env = user_env(tmp_path, SCITQ_DATA_DIR=str(tmp_path / "no-server-here"))
    config = tmp_path / "user" / "config.yaml"

    for ca in ([], ["--ca", wrong_ca]):       # the system store, then another server's CA
        refused = scitq(*ca, "login", url, "--token", token, env=env)
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"cannot verify the scitq server at {url}" in refused.stderr
        assert not config.exists()

    kept = scitq("--ca", "ca.pem", "login", url, "--token", token, env=env, cwd=tls_dir)
    assert kept.returncode == 0, kept.stderr
    assert f"token and CA {tls_dir / 'ca.pem'} kept" in kept.stderr
    assert yaml.safe_load(config.read_text())["servers"][url] == {"token": token,
                                                                  "ca": str(tls_dir / "ca.pem")}
    listed = scitq("batch", "list", "--json", env=env)              # no --ca, no SCITQ_CA
    assert listed.returncode == 0, listed.stderr
    assert [b["name"] for b in yaml.safe_load(listed.stdout)] == ["over-tls"]
    # SCITQ_CA still wins over the kept CA, and its failure names the CA it tried.
    overridden = scitq("batch", "list", env={**env, "SCITQ_CA": wrong_ca})
    assert overridden.returncode == 1 and wrong_ca in overridden.stderr
    # A login through SCITQ_CA keeps that CA too.
    assert scitq("logout", url, env=env).returncode == 0
    again = scitq("login", url, "--token", token, env={**env, "SCITQ_CA": str(tls_dir / "ca.pem")})
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(config.read_text())["servers"][url]["ca"] == str(tls_dir / "ca.pem")
    # A kept CA file since moved: one line that names it and where it was kept.
    (tmp_path / "moved").mkdir()
    (tls_dir / "ca.pem").rename(tmp_path / "moved" / "ca.pem")
    moved = scitq("batch", "list", env=env)
    assert moved.returncode == 2
    assert moved.stderr.strip() == (f"error: no CA certificate file {tls_dir / 'ca.pem'} "
                                    f"(from {config} ({url}))")
    (tmp_path / "moved" / "ca.pem").rename(tls_dir / "ca.pem")


def test_a_data_dirs_own_ca_serves_its_own_server_alone(procs, tmp_path):
    """`scitq up --host 0.0.0.0` serves https of its own CA: on its machine, CLI commands reach
    it with no flag (its data dir's note names the CA, as it leads to its admin token); another
    server of another CA is not verified with it."""
    db = f"sqlite:///{tmp_path}/own.db"
    own = procs.server(db, "--host", "0.0.0.0", "--concurrency", "1", command="up",
                       data_dir=tmp_path / "own")
    other = procs.server(f"sqlite:///{tmp_path}/other.db", "--host", "0.0.0.0", "--auth",
                         data_dir=tmp_path / "other")
    assert own.url.startswith("https://") and other.url.startswith("https://")
    env = user_env(tmp_path, SCITQ_DATA_DIR=str(own.data_dir))
    workers = wait_until(lambda: (lambda out: out.returncode == 0 and yaml.safe_load(out.stdout))(
        scitq("worker", "list", "--json", env=env)), 40, 0.5, "the local worker to show")
    assert [w["name"] for w in workers] == [f"{socket.gethostname()}-local"]
    port = own.url.rsplit(":", 1)[1]
    for url in (f"https://127.0.0.1:{port}", f"https://localhost:{port}"):
        added = scitq("--server", url, "task", "add", "true", env=env)
        assert added.returncode == 0, added.stderr
    theirs = scitq("--server", other.url, "batch", "list", env=env)
    assert theirs.returncode == 1 and "cannot verify" in theirs.stderr
    assert "against the system CA store" in theirs.stderr


def test_bad_config_file_and_bad_url_are_one_line_errors(tmp_path):
    env = user_env(tmp_path)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "config.yaml").write_text("servers: [unclosed\n")
    broken = scitq("batch", "list", env=env)
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert "is not valid YAML" in broken.stderr
    bad_url = scitq("login", "ftp://x", "--token", "t", env=user_env(tmp_path / "elsewhere"))
    assert bad_url.returncode == 2 and bad_url.stderr.startswith("error: not a server URL")


def test_the_suite_runs_in_a_home_of_its_own():
    """Acceptance 5's ground: no test sees the user's HOME, data dir, config file or server."""
    import tempfile

    from scitq import config
    home = os.environ["HOME"]
    assert home.startswith(tempfile.gettempdir()) and "scitq-test-home-" in home
    assert config.config_path().startswith(home) and config.data_dir().startswith(home)
    assert sorted(n for n in os.environ if n.startswith("SCITQ_") and not n.startswith("SCITQ_TEST_")) \
        == ["SCITQ_SERVER"]
    assert config.default_server() == (os.environ["SCITQ_SERVER"], "SCITQ_SERVER")


def test_a_dead_servers_note_is_nobodys(tmp_path, monkeypatch):
    """A killed server leaves its server.json behind: its pid is gone, so neither its URL nor
    its admin token is used."""
    from scitq import config
    dead = subprocess.Popen(["true"])
    dead.wait()
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin.token").write_text("scitq_admin_of_a_dead_server_xxxxxxxx\n")
    (data / "server.json").write_text(f'{{"url": "http://127.0.0.1:5123", "bind": "127.0.0.1", '
                                      f'"pid": {dead.pid}}}')
    monkeypatch.setenv("SCITQ_DATA_DIR", str(data))
    monkeypatch.delenv("SCITQ_SERVER")
    assert config.default_server() == (config.DEFAULT_SERVER, "the built-in default")
    assert config.find_token("http://127.0.0.1:5123") == (None, None)
    config.write_server_note(str(data), "http://192.0.2.7:5123", "0.0.0.0")    # alive: this pid
    assert config.default_server()[0] == "http://192.0.2.7:5123"
    for url in ("http://127.0.0.1:5123", "http://localhost:5123/", "http://192.0.2.7:5123"):
        assert config.find_token(url)[0] == "scitq_admin_of_a_dead_server_xxxxxxxx", url
    assert config.find_token("http://127.0.0.1:5124") == (None, None)
    config.remove_server_note(str(data))
    assert not (data / "server.json").exists()
