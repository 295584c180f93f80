"""The scitq worker: one asyncio process per host (needs only httpx)."""
from scitq.worker.worker import Worker

__all__ = ["Worker"]
