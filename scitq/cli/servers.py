"""scitq server and scitq up (the only commands that import the server's packages)."""
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

import click

from scitq import config
from scitq.cli import cli
from scitq.cli.localworker import LocalWorker
from scitq.errors import BadRequest
from scitq.log import FORMATS, setup as setup_logging


def _green():
    """Make blocking calls cooperative (sockets, locks, sleeps, subprocesses, threads) before
    the server's packages are imported, so that each of them sees gevent's versions: the
    server (scitq.server.serve) runs every connection and every loop as a greenlet."""
    from gevent import monkey
    if not monkey.is_module_patched("socket"):
        monkey.patch_all()


def _make_app(db, data_dir, lease, providers, public_url, job_backoff, deploy_engine, recruit_tick=None,
              auth=False, host="127.0.0.1"):
    from scitq.server import create_app, default_data_dir, default_db_url

    data_dir = data_dir or default_data_dir()
    config = {"DATA_DIR": data_dir, "DATABASE": db or default_db_url(data_dir),
              "PUBLIC_URL": public_url, "JOB_BACKOFF": job_backoff, "DEPLOY_ENGINE": deploy_engine,
              "AUTH": auth}
    if providers:
        config["PROVIDERS_FILE"] = providers
    if lease is not None:
        config["LEASE"] = lease
    if recruit_tick is not None:
        config["RECRUIT"] = {"tick": recruit_tick}
    config["METRICS_AUTH"] = _extra("metrics_auth")
    config.update(HOST=host, TLS=_extra("tls"), TLS_CERT=_extra("tls_cert"), TLS_KEY=_extra("tls_key"),
                  TLS_NAMES=[urlsplit(_openable(f"http://{host}:1")).hostname])   # the address it prints
    try:
        return create_app(config)
    except BadRequest:
        raise
    except Exception as exc:   # a database that cannot be reached or migrated
        raise click.ClickException(f"cannot open the database: {str(exc).splitlines()[0]}")


def _serve(app, host, port, max_connections, on_ready, before_stop=None):
    from scitq.server.serve import serve
    try:
        serve(app, host=host, port=port, max_connections=max_connections, ready=on_ready,
              before_stop=before_stop, ssl_context=app.extensions["scitq"].ssl_context,
              also=app.extensions["scitq"].also)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def _keep(ctx, param, value):
    """Options not passed to the commands' functions: kept for _extra() to read."""
    ctx.meta.setdefault("scitq.server", {})[param.name] = value


def _extra(name):
    return click.get_current_context().meta.get("scitq.server", {}).get(name)


def _no_password(ctx, param, value):
    """A password on the command line shows in `ps` to every local user: refused there."""
    if value and ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE \
            and urlsplit(value).password:
        raise click.BadParameter("a password here shows in `ps`: put the URL in SCITQ_DB "
                                 "(or the password in ~/.pgpass)")
    return value


server_options = [
    click.option("--db", envvar="SCITQ_DB", callback=_no_password,
                 help="Database URL: sqlite:///FILE or postgresql://... "
                 "(default: a SQLite file in the data dir; or SCITQ_DB, where a password goes)."),
    click.option("--data-dir", envvar="SCITQ_DATA_DIR", type=click.Path(file_okay=False),
                 help="Where the database file and task outputs live (or SCITQ_DATA_DIR)."),
    click.option("--host", default="127.0.0.1", show_default=True),
    click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True),
    click.option("--max-connections", type=click.IntRange(16), help="Connections served at once; "
                 "more are answered 503 (default: the open-files limit, raised to its hard "
                 "limit, less 256)."),
    click.option("--providers", envvar="SCITQ_PROVIDERS", type=click.Path(dir_okay=False, exists=True),
                 help="YAML file of provider settings (default: providers.yaml in the data dir)."),
    click.option("--public-url", envvar="SCITQ_PUBLIC_URL",
                 help="How worker hosts reach this server (told to the workers a deploy makes)."),
    click.option("--deploy-engine", envvar="SCITQ_DEPLOY_ENGINE", default="pyinfra", show_default=True,
                 type=click.Choice(["pyinfra", "ansible"]), help="How deploys bootstrap hosts."),
    click.option("--job-backoff", type=click.FloatRange(0), help="Seconds before a failed job's "
                 "second attempt, doubled for each further one (default 30)."),
    click.option("--recruit-tick", type=click.FloatRange(0.1), help="Seconds between recruitment "
                 "passes when nothing wakes them (default 10)."),
    click.option("--lease", type=click.FloatRange(1), help="Seconds a worker may stay silent "
                 "before its tasks are given back (default 90)."),
    click.option("--log-level", default="INFO", show_default=True,
                 type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
    click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
                 expose_value=False, callback=_keep, help="Log lines as text, or one JSON object "
                 "a line (with the access log's method, path, status, ms and principal)."),
    click.option("--metrics-auth/--no-metrics-auth", default=None, expose_value=False,
                 callback=_keep, help="/metrics needs a user's or an admin's token "
                 "(default: when --auth is on)."),
    click.option("--auth/--no-auth", default=None, help="Every API call needs a token (the first "
                 "start prints an admin token; default: on for `scitq up`, off for `scitq server`)."),
    click.option("--tls/--no-tls", default=None, expose_value=False, callback=_keep,
                 help="Serve HTTPS (default: on when --host is not a loopback address)."),
    click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), expose_value=False,
                 callback=_keep, help="Certificate chain to serve (a public CA's; default: one "
                 "of the server's own CA, made in its data dir at first start)."),
    click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), expose_value=False,
                 callback=_keep, help="The private key of --tls-cert."),
    click.option("--insecure", is_flag=True, help="Serve an address other than loopback without "
                 "auth (a trusted network only)."),
]


def _check_exposure(host, auth, insecure):
    if not auth and host not in config.LOOPBACK and not insecure:
        raise click.UsageError(f"refusing to serve {host} without auth: anyone who reaches it could "
                               "run commands; add --auth (then make tokens), or --insecure on a "
                               "trusted network")


def _say_tls(state):
    for address, context in state.also:
        click.echo(f"also serving {'https' if context else 'http'}://{address}:{state.port} "
                   "(the local provider's hosts reach this server there)", err=True)
    if state.ca_file:
        click.echo(f"TLS: the server's CA certificate is {state.ca_file} (clients: --ca FILE or "
                   "SCITQ_CA; deploys install it on each host)", err=True)
    elif state.ssl_context:
        click.echo("TLS with the given certificate (clients verify it with their system store)", err=True)


def _leave_note(state, url, host):
    """This data dir's note: clients of this machine then send this server its admin token
    and, when it serves https of its own CA, trust that CA for it."""
    # With plain HTTP or a given certificate here, state.ca_file is the bridge's CA alone.
    ca = state.ca_file if url.startswith("https:") and not _extra("tls_cert") else None
    config.write_server_note(state.data_dir, url, host, ca=ca)


def _say_admin_token(state):
    """The first admin token goes to the terminal once; never into a log file or a journal
    (a service's stderr), where only its file is named."""
    if not state.auth:
        return
    where = state.data_dir / "admin.token"
    if state.new_admin_token and sys.stderr.isatty():
        click.echo(f"auth is on. Admin token (shown once; also in {where}):\n"
                   f"  export SCITQ_TOKEN={state.new_admin_token}", err=True)
    else:
        click.echo(f"auth is on: the first admin token is in {where} (mode 600; "
                   "`scitq token create` makes more)", err=True)


def with_server_options(f):
    for option in reversed(server_options):
        f = option(f)
    return f


@cli.command()
@with_server_options
def server(db, data_dir, host, port, max_connections, providers, public_url, deploy_engine, job_backoff,
           recruit_tick, lease, log_level, auth, insecure):
    """Run the scitq server (API, dispatcher, recruitment) until SIGTERM."""
    auth = bool(auth)
    _check_exposure(host, auth, insecure)
    _green()
    setup_logging(log_level, _extra("log_format"))
    app = _make_app(db, data_dir, lease, providers, public_url, job_backoff, deploy_engine,
                    recruit_tick, auth, host)
    state = app.extensions["scitq"]

    def ready(url):
        url = _openable(url)
        _leave_note(state, url, host)
        click.echo(f"scitq server on {url}  (API {url}/api/v1, docs {url}/api/v1/docs)", err=True)
        click.echo(f"database: {state.db.describe()}; outputs in {state.outputs.root}", err=True)
        _say_tls(state)
        _say_admin_token(state)

    try:
        _serve(app, host, port, max_connections, ready)
    finally:
        config.remove_server_note(state.data_dir)


def _openable(url):
    """The listening URL as a user can open it: 0.0.0.0 or :: (every address) is no address to
    open, this host's address is (127.0.0.1 when it has no other)."""
    parts = urlsplit(url)
    if parts.hostname not in config.ANY_ADDRESS:
        return url
    address = "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))      # picks the outgoing interface; sends nothing
            address = s.getsockname()[0]
    except OSError:
        pass
    return f"{parts.scheme}://{address}:{parts.port}"


def _local_url(url):
    """How a worker on this machine reaches the server: loopback when it listens everywhere."""
    parts = urlsplit(url)
    if parts.hostname in config.ANY_ADDRESS:
        return f"{parts.scheme}://127.0.0.1:{parts.port}"
    return url


@cli.command()
@with_server_options
@click.option("--concurrency", "-c", type=click.IntRange(1, 1024), default=os.cpu_count() or 1,
              show_default=True, help="Tasks the local worker runs at once.")
def up(db, data_dir, host, port, max_connections, providers, public_url, deploy_engine, job_backoff,
       recruit_tick, lease, log_level, auth, insecure, concurrency):
    """The embedded default: a server on SQLite plus one local worker."""
    auth = auth is not False
    _check_exposure(host, auth, insecure)
    _green()
    setup_logging(log_level, _extra("log_format"))
    app = _make_app(db, data_dir, lease, providers, public_url, job_backoff, deploy_engine,
                    recruit_tick, auth, host)
    state = app.extensions["scitq"]
    local = []
    gave_up = []

    def give_up(message):
        """The worker keeps dying: say why, and stop the server (SIGTERM: its own way out)."""
        gave_up.append(message)
        os.kill(os.getpid(), signal.SIGTERM)

    def ready(url):
        name = f"{socket.gethostname()}-local"
        env = dict(os.environ)
        if state.auth:
            from scitq.server import tokens
            with state.db.write() as s:
                _, env["SCITQ_TOKEN"] = tokens.worker_token(s, name)
        if state.ca_file:
            env["SCITQ_CA"] = str(state.ca_file)
        workdir = state.data_dir / "worker"    # its own: another `scitq up` has another
        local.append(LocalWorker(
            ["worker", _local_url(url), "--concurrency", str(concurrency), "--name", name,
             "--log-level", log_level, "--workdir", str(workdir)], env, give_up))
        local[0].start()
        url = _openable(url)
        _leave_note(state, url, host)
        click.echo(f"database: {state.db.describe()}; outputs in {state.outputs.root}", err=True)
        _say_tls(state)
        _say_admin_token(state)
        click.echo(f"local worker {name}, concurrency {concurrency}, work folder {workdir}. "
                   "Try: scitq task add 'echo hi'", err=True)
        # Last: whoever waits for this line (a script, a test) finds everything above it.
        click.echo(f"scitq is up: {url}  (API {url}/api/v1, docs {url}/api/v1/docs)", err=True)

    def stop_worker():
        """The worker drains first, while the server can still hear its last reports."""
        for w in local:
            w.stop()

    try:
        _serve(app, host, port, max_connections, ready, before_stop=stop_worker)
    finally:
        stop_worker()
        config.remove_server_note(state.data_dir)
    if gave_up:
        click.echo(f"error: {gave_up[0]}", err=True)
        sys.exit(1)
