"""glibc's malloc, tuned for a merge: keep freed blocks for the next key instead of handing them back to the kernel.

A merge allocates and frees the same few large buffers for every key (each input tensor as it is read, the T task
vectors, LAPACK's workspaces). By default glibc serves blocks above a threshold that adapts up to 32 MiB with a
fresh ``mmap`` and returns them to the kernel when they are freed, and it trims the top of its heap once 128 KiB
or more is free there; so every key touches fresh pages again, and each first touch is a page fault that zeroes
4 KiB. Measured on a ViT-B/32-shaped merge of 8 models (docs/performance.md, "Memory allocator"): 1.47 million
page faults and 4.6 s of system time with glibc's defaults, 0.15 million and 2.1 s with both thresholds raised to
256 MiB; 57.9 s against 59.6 s of wall time, for 0.01 GiB more peak memory.

The ``hf-tsv`` command calls :func:`tune_for_merging` when it starts (like ``OMP_WAIT_POLICY``, the command
tunes its own process; importing ``hf_tsv`` changes nothing). A user who set glibc's malloc tunables
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or
``glibc.malloc.*`` in ``GLIBC_TUNABLES``) keeps them: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap and are reused; this much free memory at the top of the heap is kept.
# A B/32 key's largest buffer (8 task vectors of 3072 × 768 float32) is 75 MiB; a Llama-7B-shaped key's 4 task
# vectors of 4096 × 4096 float32 are 256 MiB.
THRESHOLD_BYTES = 256 * 1024**2

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def user_tuned_malloc(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment already tunes glibc's malloc (then :func:`tune_for_merging` leaves it alone).

    Example:
        >>> user_tuned_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}), user_tuned_malloc({})
        (True, False)
    """
    environ = os.environ if environ is None else environ
    return any(name in environ for name in _USER_SETTINGS) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def tune_for_merging(threshold_bytes: int = THRESHOLD_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold_bytes`` for this process; returns whether it did.

    Does nothing (returns False) off Linux/glibc, or when the user tuned malloc (:func:`user_tuned_malloc`).

    Example:
        >>> tune_for_merging()  # doctest: +SKIP
        True
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or user_tuned_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: glibc's malloc
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    value = min(int(threshold_bytes), 2**31 - 1)
    # mmap first: setting either one fixes the mmap threshold, and a fixed 128 KiB one would mmap every buffer.
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
