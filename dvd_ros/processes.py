"""Facts about other processes on this machine (numpy-free, torch-free)."""

import os


def pid_alive(pid):
    """Return whether a process ``pid`` exists on this machine (one we may not signal too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
