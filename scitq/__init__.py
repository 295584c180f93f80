"""scitq: a despotic task orchestrator for scientific batch work."""

__version__ = "0.1.0"
