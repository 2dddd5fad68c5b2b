"""Returning freed memory to the operating system after the large weight temporaries.

glibc keeps freed heap blocks for reuse: after the LoRA merge (thousands of mid-size float64
temporaries) gigabytes stay resident for the life of the process unless the heap is trimmed.
"""

import ctypes
import ctypes.util
import gc
import platform

_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        if platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc':
            try:
                _LIBC = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
                _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):
                _LIBC = False
    return _LIBC


def release_memory():
    """Collect garbage and hand the free heap back to the OS (``malloc_trim`` on glibc).

    :return: True when ``malloc_trim`` ran (glibc), False elsewhere.
    """
    gc.collect()
    libc = _libc()
    if not libc:
        return False
    libc.malloc_trim(0)
    return True
