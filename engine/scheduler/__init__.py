"""The continuous-batching scheduler shared by the server and the CLI."""

from autoglm.engine.scheduler.batch import Event, QueueFullError, Request, Scheduler

__all__ = ["Event", "QueueFullError", "Request", "Scheduler"]
