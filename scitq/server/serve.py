"""Run the server for real: gevent's WSGI server (one greenlet per connection) plus the loops.

A worker's long poll waits most of its life. Under waitress each waiting poll held one of a
fixed set of threads, so 200 workers took them all and a UI read waited 20 s; here a waiting
poll is a parked greenlet (a few KiB), the loops (dispatcher, jobs, recruitment) are greenlets
too (the CLI monkey-patches the process before it imports the server), and psycopg 3 yields
to them while PostgreSQL answers.

Running out of descriptors never kills the server: it raises its open-files limit to the hard
limit at start, answers connections past `max_connections` with a 503 and Retry-After (plain
HTTP; under TLS they are closed, which clients retry the same way), and when accept() itself
fails for want of descriptors it pauses accepting, logs one line, and serves the connections
it has.
"""
import errno
import logging
import resource
import signal
import socket
import time

log = logging.getLogger("scitq.server")

IDLE_TIMEOUT = 300.0        # seconds a kept-alive connection may stay silent between requests
RESERVE_FDS = 256           # descriptors kept for the database, output files and jobs
RETRY_AFTER = 5             # seconds a refused client is asked to wait
# Connections the kernel holds before accept() (capped by net.core.somaxconn): a fleet that
# boots or reconnects together overflowed gevent's 128, and its connects waited for SYN
# retransmits (1, 3, 7 s...) until they timed out.
BACKLOG = 4096
ONE_SEND = 64 * 1024        # bytes of an answer's body sent with its headers in one write
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: %d\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s")
REFUSAL_BODY = b'{"error": "the server is at its connection limit: retry later", "detail": null}'


def raise_open_files_limit():
    """The soft limit up to the hard one: each connection costs a descriptor. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %s to %s: %s", soft, target, exc)
    return soft


def default_max_connections(fd_limit):
    return max(16, fd_limit - RESERVE_FDS)


def _server_classes():
    """Built on first use: importing gevent.pywsgi is only for the process that serves."""
    from gevent import pywsgi

    class Handler(pywsgi.WSGIHandler):
        """A connection silent between requests for IDLE_TIMEOUT is closed (a dead client
        must not hold a descriptor forever); a poll waiting on the server reads nothing and
        is not affected."""

        def __init__(self, sock, address, server, rfile=None):
            sock.settimeout(IDLE_TIMEOUT)
            # pywsgi sends a response's headers and body in two writes: with Nagle's algorithm
            # the body waited for the client's delayed ACK, 40 ms on every answer.
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass        # not TCP (a Unix socket)
            super().__init__(sock, address, server, rfile)

        def read_request(self, raw_requestline):
            # Counted from its request line on: a kept-alive connection waiting for its next
            # request (inside handle_one_request too) is idle, and a stop does not wait for it.
            self.counted = True
            self.server.busy += 1
            return super().read_request(raw_requestline)

        def handle_one_request(self):
            self.counted = False
            try:
                result = super().handle_one_request()
            finally:
                if self.counted:
                    self.server.busy -= 1
            # A stopping server ends each connection after its request: a worker whose poll
            # was just answered would, else, poll again at once on the same connection.
            return None if self.server.closing and result is True else result

        def _write_with_headers(self, data):
            # pywsgi sends the headers, then the body: two syscalls (and two packets) for each
            # answer, 5% of the server's CPU under a busy fleet. A small answer goes in one.
            if not data or len(data) > ONE_SEND:
                return super()._write_with_headers(data)
            parts = []
            self._sendall = parts.append        # what it would send, in order
            try:
                super()._write_with_headers(data)
            finally:
                del self._sendall               # the class's own again
            self._sendall(b"".join(parts))

        def log_request(self):
            pass        # the app logs its own requests; a line per poll here would be noise

    class Server(pywsgi.WSGIServer):
        handler_class = Handler

        def __init__(self, listener, app, max_connections, **kwargs):
            super().__init__(listener, app, log=None, error_log=_ErrorLog(), **kwargs)
            self.max_connections = max_connections
            self.open = 0           # connections being served
            self.busy = 0           # of those, in a request (not idle between two)
            self.refused = 0
            self.closing = False
            self._last_warning = 0.0

        def do_read(self):
            try:
                return super().do_read()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self._warn(f"cannot accept a connection ({exc.strerror}): serving the "
                           f"{self.open} open ones, accepting again in 1 s")
                self.stop_accepting()
                self._timer = self.loop.timer(1.0)
                self._timer.start(self._start_accepting_if_started)
                return None

        def do_handle(self, sock, address):
            if self.open >= self.max_connections:
                self.refused += 1
                self._warn(f"{self.open} connections open, the limit: refusing new ones "
                           f"with 503 (refused so far: {self.refused})")
                _refuse(sock, tls=self.ssl_enabled)
                return
            self.open += 1
            super().do_handle(sock, address)

        def do_close(self, sock, *args):
            self.open -= 1
            super().do_close(sock, *args)

        def _warn(self, message):
            now = time.monotonic()
            if now - self._last_warning >= 10:      # one line, not one per connection
                self._last_warning = now
                log.warning("%s", message)

    return Server


class _ErrorLog:
    """gevent's error log (a broken request, a failed handshake) into ours, one line each."""

    def write(self, text):
        text = text.strip()
        if text:
            log.warning("http: %s", text.splitlines()[-1])

    def flush(self):
        pass


def _refuse(sock, tls):
    try:
        if not tls:
            sock.setblocking(False)
            sock.send(REFUSAL % (RETRY_AFTER, len(REFUSAL_BODY), REFUSAL_BODY))
    except OSError:
        pass
    finally:
        sock.close()


def freebind_listener(address, port):
    """A listening socket on an address this machine may not have yet (IP_FREEBIND): the local
    provider's bridge takes its address when its first host is made."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def serve(app, host="127.0.0.1", port=5000, ready=None, before_stop=None, max_connections=None,
          ssl_context=None, also=()):
    """Serve until SIGTERM or SIGINT; `ready(url)` is called once the socket listens.

    `before_stop()` runs on the signal while the server still answers, and the server closes
    when it returns. `ssl_context`: serve TLS with it (an ssl.SSLContext, server side).
    `also`: more (address, ssl_context) to serve on the same port (the local provider's bridge)."""
    import gevent
    import gevent.event

    fd_limit = raise_open_files_limit()
    state = app.extensions["scitq"]
    server = _server_classes()((host, port), app, max_connections or default_max_connections(fd_limit),
                               backlog=BACKLOG, **({"ssl_context": ssl_context} if ssl_context else {}))
    server.init_socket()
    scheme = "https" if ssl_context else "http"
    bound = server.socket.getsockname()[1]
    servers = [server]
    for address, context in also:
        try:
            listener = freebind_listener(address, bound)
        except OSError as exc:
            log.error("cannot listen on %s:%d too: %s", address, bound, exc.strerror or exc)
            continue
        servers.append(_server_classes()(listener, app, server.max_connections,
                                         **({"ssl_context": context} if context else {})))
        log.info("serving %s://%s:%d too", "https" if context else "http", address, bound)
    url = f"{scheme}://{host if ':' not in host else f'[{host}]'}:{bound}"
    state.port = bound
    state.dispatcher.start()
    state.jobs.start()
    state.reconciler.start()
    state.rollups.start()
    stopped = gevent.event.Event()
    stopping = []

    def close():
        try:
            if before_stop:
                before_stop()
        finally:
            for one in servers:
                one.closing = True
            state.notifier.close()          # answer the waiting polls
            for one in servers:
                one.close()                 # accept no more
            deadline = time.monotonic() + 5
            while any(one.busy for one in servers) and time.monotonic() < deadline:
                gevent.sleep(0.05)          # requests in flight finish; idle connections do not wait
            stopped.set()

    def stop(signum):
        if not stopping:
            stopping.append(signum)
            log.info("signal %s: stopping", signum)
            gevent.spawn(close)

    handlers = [gevent.signal_handler(sig, stop, sig) for sig in (signal.SIGTERM, signal.SIGINT)]
    for one in servers:
        one.start()
    log.info("serving %s (at most %d connections, open-files limit %d)", url,
             server.max_connections, fd_limit)
    try:
        if ready:
            ready(url)
        stopped.wait()
    finally:
        for h in handlers:
            h.cancel()
        for one in servers:
            one.stop(timeout=1)
        state.reconciler.stop()
        state.rollups.stop()
        state.dispatcher.stop()
        state.jobs.stop()
        state.db.dispose()
