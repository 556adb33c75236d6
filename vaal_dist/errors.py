"""The errors a user can act on: each message names the bad input."""
from vaal_dist.redaction import redact


class VaalDistError(Exception):
    """Base of the errors vaal_dist raises on purpose. Its message names URIs without their credentials,
    whoever raised it and whatever it quotes (a storage library's error text, say)."""

    def __init__(self, message: str):
        super().__init__(redact(message))


class InputError(VaalDistError, ValueError):
    """A pool, manifest, path or argument that cannot be used as given."""


class StorageError(VaalDistError, OSError):
    """Storage kept failing with errors that usually pass (throttling, 5xx, connection resets) after every
    allowed retry; the message names the object."""


class DivergedModelError(VaalDistError, FloatingPointError):
    """A trained model produced NaN or infinite scores."""


class ScoringFailedError(VaalDistError, RuntimeError):
    """Scoring actors kept dying on the same batch after every allowed retry, or a batch ran past its timeout."""


def raise_if_input_error(e: Exception) -> None:
    """Raise the InputError whose text ``e`` carries, if any: Ray wraps an error raised in one of its
    tasks, actors or workers and keeps its text, not its type."""
    raise_if_remote(e, InputError)


def raise_if_remote(e: Exception, kind: type[VaalDistError]) -> None:
    """Raise the error of type ``kind`` whose text ``e`` carries, if any (see raise_if_input_error)."""
    message = _remote_message(e, kind)
    if message:
        raise kind(message) from e


def _remote_message(e: Exception, kind: type[VaalDistError]) -> str | None:
    """The message of a ``kind`` error raised remotely, from the full (untruncated) worker errors."""
    marker = f"{kind.__module__}.{kind.__name__}: "
    for text in [str(e), *map(str, getattr(e, "worker_failures", {}).values())]:
        if marker in text:
            return text.split(marker, 1)[1].splitlines()[0]
    return None
