"""The continuous-batching scheduler shared by the server and the CLI."""

from autoglm.engine.scheduler.batch import Event, Generation, QueueFullError, Scheduler

__all__ = ["Event", "QueueFullError", "Generation", "Scheduler"]
