"""One exception hierarchy whose messages are written for users.

Every error a user can cause or fix (a bad path, a model that is not installed, no network)
derives from :class:`AutoGLMError`; the CLI prints ``str(err)`` on one line and exits with
``err.exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutoGLMError(Exception):
    """Base of every user-facing engine error."""

    exit_code = 1


class ModelNotFoundError(AutoGLMError):
    """The name is neither an installed model, a known source nor an existing file."""


class InvalidModelError(AutoGLMError):
    """The file exists but is not a usable model (wrong magic, truncated, corrupt)."""


class DamagedModelError(InvalidModelError):
    """A loaded model gave unusable scores (NaN or infinite): its weights rotted after they were checked."""


class IntegrityError(AutoGLMError):
    """Downloaded or stored bytes do not match their recorded sha256."""


class NetworkError(AutoGLMError):
    """A source could not be reached."""


class SourceError(AutoGLMError):
    """A source was reached but refused or does not have what was asked for."""


class ContextOverflowError(AutoGLMError):
    """The prompt does not fit in the planned context window."""


class InvalidArgumentError(AutoGLMError):
    """An option's value is out of range."""

    exit_code = 2


class ExtractionFailedError(AutoGLMError):
    """No answer of the model validated against the schema (or the model could not be prompted)."""


class BackendError(AutoGLMError):
    """The native backend failed to load or run a model."""


class CancelledError(AutoGLMError):
    """The user cancelled a long operation; nothing was installed or changed."""

    exit_code = 130


class QueueFullError(AutoGLMError):
    """More requests wait than the queue holds; the server answers 429 with Retry-After."""


class SchedulerFailedError(AutoGLMError):
    """A step failed; the engine serves nothing more until it is restarted (the server answers 503)."""


class RequestTooCostlyError(AutoGLMError):
    """One request would cost every other stream too much (a grammar too dear per token): it alone ends."""


class StorageError(AutoGLMError):
    """The store's disk refused a write (full, read-only, no permission)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A foreign exception (a template's, a server's) as one line for the user: its first line, or
    its type when it says nothing."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
