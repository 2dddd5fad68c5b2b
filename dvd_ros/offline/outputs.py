"""What an offline run owns in `--out`, checked before anything is touched.

A run's outputs are a fixed set of names under the output folder (`OUTPUT_NAMES`).  Before
any of them is created or replaced the run checks that none of them (nor the folder) is, lies
inside or contains the input, takes the folder's lock, and checks that nothing of a previous
run is in the way (or that `--overwrite` was given).  Only then are the old outputs it will
write removed: a start-up that stops on any check leaves every file as it was.
"""

import logging
import os
from pathlib import Path
import shutil

from dvd_ros.errors import InputError
from dvd_ros.processes import open_locked, pid_alive

LOG = logging.getLogger('dvd_ros.offline')

# Names each output kind writes under --out ('frames' is frames.csv, always written).
OUTPUT_NAMES = {
    'frames': ('frames.csv',),
    'png16': ('disparity', 'depth'),
    'npz': ('npz',),
    'mp4': ('depth.mp4',),
    'ply': ('ply',),
    'ply-fused': ('fused.ply',),
    'bag': ('bag',),
}
# Work files a killed run may leave; removed at start-up without asking (never user data).
SCRATCH_NAMES = {
    'mp4': ('depth.tmp.mp4', '.depth.probe.mp4'),
    'ply-fused': ('fused.ply.part', 'fused.tmp.ply'),
}
LOCK_NAME = '.dvd_ros.lock'


def _inside(path, folder):
    """Return whether real path `path` lies strictly inside real path `folder`."""
    try:
        return path != folder and os.path.commonpath([path, folder]) == folder
    except ValueError:  # different drives
        return False


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class OutputPlan:
    """The paths one run writes under `root`, for the output kinds `kinds`.

    :param root: the output folder (--out)
    :param kinds: output kinds (`OUTPUT_NAMES` keys; 'frames' is always added)
    """

    def __init__(self, root, kinds):
        self.root = Path(root)
        self.kinds = tuple(dict.fromkeys(('frames', *kinds)))
        self.paths = [self.root / name for kind in self.kinds
                      for name in OUTPUT_NAMES.get(kind, ())]
        self.scratch = [self.root / name for kind in self.kinds
                        for name in SCRATCH_NAMES.get(kind, ())]
        self._lock = None

    def check_input(self, input_path):
        """Raise InputError when an output (or --out) and the input overlap.

        Paths are compared after resolving symlinks: an output may not be the input, lie
        inside it or contain it, and --out may not be the input, lie inside it or contain it
        (an input inside the output folder is one ``--overwrite`` or a later run could reach).
        """
        if input_path is None:
            return
        source = os.path.realpath(input_path)
        root = os.path.realpath(self.root)
        if root == source or _inside(root, source) or _same_file(root, source):
            raise InputError(f'output folder {self.root} is or lies inside the input '
                             f'{input_path}; choose an --out outside the input')
        for path in self.paths + self.scratch:
            real = os.path.realpath(path)
            if real == source or _same_file(real, source):
                raise InputError(f'the input {input_path} is the output {path} of this run, '
                                 'which would replace it; choose another --out')
            if _inside(source, real):
                raise InputError(f'the input {input_path} lies inside {path}, an output of '
                                 'this run that would replace it; choose another --out')
            if _inside(real, source):
                raise InputError(f'the output {path} would be written inside the input '
                                 f'{input_path}; choose an --out outside the input')
        if _inside(source, root):
            raise InputError(f'the input {input_path} lies inside the output folder '
                             f'{self.root}; move the input out of it or choose another --out')

    def existing(self):
        """Return the outputs of a previous run that are in the way (final names only)."""
        return [p for p in self.paths if os.path.lexists(p)]

    def check_existing(self, overwrite):
        """Raise InputError when an output exists and `overwrite` is off."""
        existing = self.existing()
        if existing and not overwrite:
            raise InputError(f'{existing[0]} already exists; use another --out or pass '
                             '--overwrite')

    def remove_old(self, overwrite):
        """Remove the old outputs this run writes (with `overwrite`) and left-over work files.

        Call only after every start-up check passed.
        """
        self.check_existing(overwrite)
        for path in self.existing() + [p for p in self.scratch if os.path.lexists(p)]:
            remove_path(path)

    def lock(self):
        """Take the folder's lock (see `FolderLock`); released by `unlock`."""
        self._lock = FolderLock(self.root / LOCK_NAME)
        self._lock.acquire()
        return self._lock

    def unlock(self):
        """Release the lock taken by `lock` (no-op without one)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def remove_path(path):
    """Remove a file, symlink (not its target) or folder tree."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class FolderLock:
    """An exclusive lock on an output folder: `flock` on a file holding the holder's PID.

    A second run on the folder is refused with the holder's PID.  The kernel drops a `flock`
    when its process dies, so the lock of a killed run is taken over (with a log line naming
    the dead PID); where `flock` is unavailable the PID alone decides.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._fd = None

    def _holder(self):
        try:
            text = self.path.read_text(encoding='ascii', errors='replace').strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _refuse(self, pid):
        holder = f'PID {pid}' if pid is not None else 'PID unknown'
        raise InputError(f'output folder {self.path.parent} is in use by another dvd-ros '
                         f'offline run ({holder}, lock {self.path}); wait for it to finish or '
                         'choose another --out')

    def acquire(self):
        """Take the lock or raise InputError naming the holder's PID."""
        try:
            fd, fcntl_ok = open_locked(self.path, wait=False, without_flock=True)
        except BlockingIOError:
            self._refuse(self._holder())
        except OSError as exc:
            raise InputError(f'cannot create the lock {self.path}: '
                             f'{exc.strerror or exc}; pass a writable --out') from exc
        previous = self._holder()
        if previous is not None and previous != os.getpid():
            if not fcntl_ok and pid_alive(previous):
                os.close(fd)
                self._refuse(previous)
            LOG.warning('taking over the stale lock %s of PID %d, which is no longer running',
                        self.path, previous)
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode('ascii'))
        self._fd = fd
        return self

    def release(self):
        """Remove the lock file and release the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
