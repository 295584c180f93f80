"""Run the server for real: waitress (threaded, production grade) plus the dispatcher."""
import logging
import signal
import sys
import threading

from waitress import create_server

log = logging.getLogger("scitq.server")


def serve(app, host="127.0.0.1", port=5000, threads=64, ready=None, before_stop=None):
    """Serve until SIGTERM or SIGINT; `ready(url)` is called once the socket listens.

    `before_stop()` runs on the signal while the server still answers (in a thread: the
    main thread must keep serving), and the server closes when it returns.
    """
    state = app.extensions["scitq"]
    # Request threads hand work to the dispatcher and back: a 1 ms GIL switch interval
    # (instead of 5) keeps a busy thread from delaying a woken one.
    sys.setswitchinterval(0.001)
    server = create_server(app, host=host, port=port, threads=threads,
                           channel_timeout=300, connection_limit=4096, ident="scitq")
    url = f"http://{host if ':' not in host else f'[{host}]'}:{server.effective_port}"
    state.port = server.effective_port
    state.dispatcher.start()
    state.jobs.start()
    state.reconciler.start()
    state.rollups.start()
    stopping = threading.Event()

    def close():
        try:
            if before_stop:
                before_stop()
        finally:
            state.notifier.close()       # answer the waiting polls, then let threads finish
            server.task_dispatcher.shutdown(cancel_pending=False, timeout=5)
            # Workers keep their connections open (and poll again at once): close them too,
            # in the loop's own thread, or the loop would serve them forever.
            server.trigger.pull_trigger(lambda: _close_all(server))

    def stop(signum, _frame):
        if not stopping.is_set():
            stopping.set()
            log.info("signal %s: stopping", signum)
            threading.Thread(target=close, name="scitq-stop").start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    if ready:
        ready(url)
    try:
        server.run()
    except OSError:
        if not stopping.is_set():   # waitress raises on its closed socket when told to stop
            raise
    finally:
        state.reconciler.stop()
        state.rollups.stop()
        state.dispatcher.stop()
        state.jobs.stop()
        state.db.dispose()


def _close_all(server):
    for channel in list(server._map.values()):
        if channel is not server and channel is not server.trigger:
            channel.close()
    server.close()
