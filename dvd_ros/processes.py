"""Coordination with other processes on this machine: liveness and exclusive lock files."""

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


def open_locked(path, wait=True, on_wait=None, without_flock=False):
    """Open (creating) ``path`` and hold an exclusive ``flock`` on it; return ``(fd, locked)``.

    A holder removes its lock file on release; a waiter whose locked file was meanwhile
    unlinked (or replaced) opens the new one and locks again, so two holders never overlap.

    :param wait: when another process holds the lock, wait for it (after calling
        ``on_wait()``); False: raise ``BlockingIOError``.
    :param without_flock: a filesystem without ``flock`` (or no ``fcntl``) gives
        ``locked`` False instead of raising ``OSError``; the caller decides (e.g. by PID).
    :return: the open descriptor (the caller closes it) and whether the flock is held.
    """
    try:
        import fcntl
    except ImportError:
        fcntl = None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    if not wait:
                        raise
                    if on_wait is not None:
                        on_wait()
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    locked = True
                except OSError:
                    if not without_flock:
                        raise
            elif not without_flock:
                raise OSError(f'cannot lock {path}: no fcntl on this platform')
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd, locked
        os.close(fd)
