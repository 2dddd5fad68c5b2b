"""Exceptions with messages a user can act on (what is wrong, and the fix)."""


class DvdError(Exception):
    """Base class of every error dvd_ros raises on purpose."""


class InputError(DvdError, ValueError):
    """Bad frames, images or parameters: wrong dtype, shape, size, encoding, NaN."""


class WeightsError(DvdError):
    """Missing, corrupt, unsafe or unrecognised model weights."""


class BackendUnavailable(DvdError):
    """An execution backend cannot run on this machine (names the reason and the fix)."""
