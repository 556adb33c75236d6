"""The errors a user can act on: each message names the bad input."""


class VaalDistError(Exception):
    """Base of the errors vaal_dist raises on purpose."""


class InputError(VaalDistError, ValueError):
    """A pool, manifest, path or argument that cannot be used as given."""


class DivergedModelError(VaalDistError, FloatingPointError):
    """A trained model produced NaN or infinite scores."""


class ScoringFailedError(VaalDistError, RuntimeError):
    """Scoring actors kept dying on the same batch after every allowed retry."""
