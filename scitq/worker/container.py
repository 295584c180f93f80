"""Docker tasks on the worker: one container run with its output streamed like a process's.

Its options' grammar is scitq.taskspec's (the server checks submissions with it); the docker
SDK is imported only when a container is run.
"""
import asyncio
import logging
import os
import shlex
import threading

from scitq.errors import ContainerError
from scitq.taskspec import LABEL, parse_options
from scitq.worker.credential import is_secret

log = logging.getLogger("scitq.worker")

DEFAULT_HOST = "unix:///var/run/docker.sock"


# --- running one container -------------------------------------------------------

def task_environ():
    """The worker's variables a task's `-e NAME` may take: all but the worker's secrets (its
    token is no task's)."""
    return {name: value for name, value in os.environ.items() if not is_secret(name)}


def _docker():
    try:
        import docker
    except ImportError:
        raise ContainerError(
            "docker tasks need the docker SDK: pip install 'scitq[docker]'") from None
    return docker


def _why(exc):
    """What went wrong, in one line: the engine's own words, or the innermost OS error."""
    text = getattr(exc, "explanation", None)
    if not text:
        cause, text = exc, str(exc)
        while cause is not None:
            if isinstance(cause, OSError) and cause.strerror:
                text = cause.strerror
            cause = cause.__cause__ or cause.__context__
    return " ".join(str(text).split())


def connect(docker_host=None):
    """Blocking: a docker client to docker_host, else to $DOCKER_HOST or the default socket,
    that has answered a ping."""
    docker = _docker()
    host = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    client = None
    try:
        client = docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()
        client.ping()
    except Exception as exc:                # the SDK lets requests' own errors through too
        if client is not None:
            client.close()
        raise ContainerError(f"docker engine not reachable at {host}: {_why(exc)}") from None
    return client


def _in_thread(fn, *args):
    """fn(*args) in a thread of its own, as a future of the running loop. Not the loop's default
    executor: a container's wait() blocks for the task's whole life, and a few of them would
    starve everything else there (name resolution included)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, exc):
        if future.done():                       # cancelled meanwhile
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    def work():
        try:
            outcome = (fn(*args), None)
        except Exception as exc:                # handed to the awaiting coroutine
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:                    # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=work, daemon=True, name=f"docker-{fn.__name__}").start()
    return future


class _Valve:
    """What an asyncio.StreamReader takes for its transport: the reader pauses it when its
    buffer is full and resumes it once read, and the thread pumping a container's output waits
    while it is paused. So a slow consumer makes the container's output wait, not pile up."""

    def __init__(self):
        self.open = asyncio.Event()
        self.open.set()

    def pause_reading(self):
        self.open.clear()

    def resume_reading(self):
        self.open.set()


class ContainerRun:
    """One task in one container: scitq's mounts, the task's options, output streamed.

    Read stdout and stderr together (as the output pumps do): while one reader is full, the
    other gets nothing more, as with a process's pipes.
    """

    def __init__(self, image, command, *, shell=True, mounts, env, options=None, docker_host=None,
                 name=None):
        self.image = image
        self.command = command
        self.shell = shell
        self.mounts = list(mounts)          # (host path, container path, read only)
        self.env = {k: str(v) for k, v in env.items()}
        self.options = options
        self.docker_host = docker_host
        self.name = name
        self.id = None
        self.stdout = self.stderr = None
        self._client = None
        self._exit = None
        self._closing = False
        self._removed = False

    # --- start -----------------------------------------------------------------

    async def start(self):
        """Create and start the container; ContainerError if that cannot be done (nothing is
        left behind then)."""
        self.stdout, self.stderr = asyncio.StreamReader(), asyncio.StreamReader()
        self._valves = (_Valve(), _Valve())
        self.stdout.set_transport(self._valves[0])
        self.stderr.set_transport(self._valves[1])
        pending = None
        try:
            pending = _in_thread(self._create)
            sock = await asyncio.shield(pending)
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._pump, args=(sock, loop), daemon=True,
                             name=f"docker-output-{self.id[:12]}").start()
            pending = _in_thread(self._start)
            await asyncio.shield(pending)
        except BaseException:
            if pending is not None and not pending.done():
                # start() was cancelled: let the blocking call end, then undo what it made
                await asyncio.wait([pending])
            if self.id is not None:
                try:
                    await self.remove()
                except ContainerError as exc:
                    log.warning("container %s: %s", self.id[:12], exc)
            elif self._client is not None:
                self._client.close()
            self.stdout.feed_eof()
            self.stderr.feed_eof()
            raise
        self._exit = _in_thread(self._wait)
        # its error, if any, is wait()'s to raise; unawaited, it is no news (the run was removed)
        self._exit.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _create(self):
        """Blocking: connect, make sure of the image, create the container and attach to it."""
        docker = _docker()
        try:
            kwargs = parse_options(self.options, environ=task_environ())
            argv = ["/bin/sh", "-c", self.command] if self.shell else shlex.split(self.command)
        except ValueError as exc:
            raise ContainerError(str(exc)) from None
        self._client = client = connect(self.docker_host)
        try:
            client.api.inspect_image(self.image)
        except docker.errors.NotFound:
            try:
                client.images.pull(self.image)
            except Exception as exc:
                raise ContainerError(f"image {self.image} is not present on this worker's docker "
                                     f"engine and pulling it failed: {_why(exc)}") from None
        except Exception as exc:
            raise ContainerError(f"docker engine: {_why(exc)}") from None
        env = dict(self.env)
        env.update(kwargs.pop("environment", {}))      # what the task asks for explicitly wins
        labels = dict(kwargs.pop("labels", {}), **{LABEL: "1"})
        # scitq's own mounts as Mount objects: a host path may hold a ':' there
        mounts = [docker.types.Mount(target, source, type="bind", read_only=bool(ro))
                  for source, target, ro in self.mounts]
        kwargs.setdefault("network_mode", "none")
        try:
            container = client.containers.create(
                self.image, argv, environment=env, labels=labels, mounts=mounts,
                name=self.name, stdin_open=False, tty=False, **kwargs)
        except Exception as exc:
            raise ContainerError(f"cannot create the container: {_why(exc)}") from None
        self.id = container.id
        # Attached before it starts, so that not one byte of its output is missed.
        try:
            return client.api.attach_socket(self.id, params={"stdout": 1, "stderr": 1, "stream": 1})
        except Exception as exc:
            raise ContainerError(f"cannot attach to the container: {_why(exc)}") from None

    def _start(self):
        try:
            self._client.api.start(self.id)
        except Exception as exc:
            raise ContainerError(f"cannot start the container: {_why(exc)}") from None

    # --- output ----------------------------------------------------------------

    def _pump(self, sock, loop):
        """Thread: the attach stream, demultiplexed, into the two readers; EOF on both at its
        end."""
        from docker.utils.socket import STDERR, STDOUT, frames_iter
        targets = {STDOUT: (self.stdout, self._valves[0]), STDERR: (self.stderr, self._valves[1])}
        try:
            for stream, data in frames_iter(sock, False):
                if stream in targets:
                    # wait until the loop has it, and for room if the reader is full
                    feed = self._feed(*targets[stream], data)
                    asyncio.run_coroutine_threadsafe(feed, loop).result()
        except Exception as exc:
            if not self._closing:
                log.warning("container %s: output stream broken: %s", self.id[:12], _why(exc))
        finally:
            try:
                sock.close()
            except OSError:
                pass
            for reader in (self.stdout, self.stderr):
                try:
                    loop.call_soon_threadsafe(reader.feed_eof)
                except RuntimeError:            # the loop is closed
                    pass

    async def _feed(self, reader, valve, data):
        reader.feed_data(data)
        if not self._closing:
            await valve.open.wait()

    # --- control ---------------------------------------------------------------

    async def wait(self):
        """The container's exit code (137 after kill())."""
        if self._exit is None:
            raise ContainerError("the container was not started")
        return await asyncio.shield(self._exit)

    def _wait(self):
        try:
            return self._client.api.wait(self.id, timeout=None)["StatusCode"]
        except Exception as exc:
            raise ContainerError(f"lost the container {self.id[:12]}: {_why(exc)}") from None

    async def kill(self):
        """SIGKILL; nothing if it has already ended."""
        await self._control("kill")

    async def pause(self):
        """Freeze every process of the container (docker pause)."""
        await self._control("pause")

    async def resume(self):
        await self._control("unpause")

    async def _control(self, action):
        if self.id is None or self._removed:
            return
        await _in_thread(self._call, action)

    def _call(self, action):
        docker = _docker()
        try:
            getattr(self._client.api, action)(self.id)
        except docker.errors.NotFound:
            pass
        except Exception as exc:
            if not self._moot(action):
                raise ContainerError(f"docker {action} failed: {_why(exc)}") from None

    def _moot(self, action):
        """Whether a refused action did not matter: the container has ended (or is gone), or
        is already paused or not, as asked. (The engine's status codes for these vary.)"""
        docker = _docker()
        try:
            state = self._client.api.inspect_container(self.id)["State"]
        except docker.errors.NotFound:
            return True
        except Exception:
            return False
        if not state["Running"]:
            return True
        return {"pause": state["Paused"], "unpause": not state["Paused"]}.get(action, False)

    async def remove(self):
        """Remove the container, running or not; its output readers then end."""
        if self.id is None or self._removed:
            return
        self._closing = True
        for valve in self._valves:          # a pump blocked on a full reader goes on to its end
            valve.open.set()
        await _in_thread(self._remove)
        self._removed = True

    def _remove(self):
        docker = _docker()
        try:
            self._client.api.remove_container(self.id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:          # 409: its removal is already under way
                raise ContainerError(f"cannot remove the container: {_why(exc)}") from None
        except Exception as exc:
            raise ContainerError(f"cannot remove the container: {_why(exc)}") from None
        self._client.close()


def remove_leftovers(docker_host=None):
    """Blocking: remove every container labelled scitq=1 (a crashed worker's); their ids."""
    client = connect(docker_host)
    try:
        found = client.containers.list(all=True, filters={"label": f"{LABEL}=1"})
        for container in found:
            container.remove(force=True)
        return [c.id for c in found]
    finally:
        client.close()
