"""The worker's output pump alone: no byte lost when the stream ends during a send.
(The real path, through a server, is in test_e2e.py; here a slow link makes the race exact.)"""
import asyncio
import base64

from scitq.worker.process import OutputPump


class SlowLink:
    """Stands for the server: stores chunks by offset, like OutputStore, after a delay."""

    def __init__(self, delay):
        self.delay = delay
        self.stored = bytearray()

    async def call(self, method, path, params, content, headers):
        await asyncio.sleep(self.delay)
        offset = params["offset"]
        assert offset <= len(self.stored)
        self.stored[offset:offset + len(content)] = content
        return {"size": len(self.stored)}


def test_bytes_sent_while_the_stream_ends_are_not_lost():
    async def scenario():
        link = SlowLink(delay=0.3)
        reader = asyncio.StreamReader()
        pump = OutputPump(link, 1, "stdout", reader)
        pump.flush_interval = 0.05
        running = asyncio.create_task(pump.run())
        reader.feed_data(b"first line\n")
        await asyncio.sleep(0.1)            # the ticker is now sending "first line"
        reader.feed_data(b"done\n")
        reader.feed_eof()                   # the process ends during that send
        await running
        tail = await pump.tail()
        if tail:
            link.stored[tail["offset"]:] = base64.b64decode(tail["data"])
        return bytes(link.stored)

    assert asyncio.run(scenario()) == b"first line\ndone\n"


def test_memory_stays_bounded_when_the_server_is_slow():
    async def scenario():
        link = SlowLink(delay=0.01)
        reader = asyncio.StreamReader(limit=1 << 16)
        pump = OutputPump(link, 2, "stdout", reader)
        pump.flush_bytes = 1 << 16
        running = asyncio.create_task(pump.run())
        peak = 0
        for _ in range(200):
            reader.feed_data(b"x" * 4096)
            peak = max(peak, len(pump.buf))
            await asyncio.sleep(0)
        reader.feed_eof()
        await running
        tail = await pump.tail()
        sent = len(link.stored) + (len(base64.b64decode(tail["data"])) if tail else 0)
        return peak, sent

    peak, sent = asyncio.run(scenario())
    assert sent == 200 * 4096
    assert peak <= (1 << 16) + 4096 * 2
