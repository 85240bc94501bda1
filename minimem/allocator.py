"""Keep freed memory in the process for reuse, instead of handing it back to the system after every
training step (glibc's malloc; a no-op elsewhere).

Why: a training step allocates its working arrays afresh (the forward's caches, the backward's
gradients) and frees them at its end. By default glibc serves every array above 128 KB with its own
mmap and unmaps it when it is freed, or, once its threshold has adapted, returns the top of the heap
to the system whenever more than twice that is free. Either way the next step asks the system for
the same memory again, and every fresh 4 KB page costs a minor page fault when it is first written:
~3-5 us each on the 2-core virtual machines minimem is developed on. Measured there, manual engine
alone, one training step at the demo sizes (bench_engines problems; faults per step, then time):

    NAM Transformer   1,554-2,595 faults   15.3 -> 7.8 ms
    HMA head          1,203-2,256 faults   18.7 -> 10.7 ms
    NAM-TM            1,603-1,646 faults   35.7-49.0 -> 27.9-40.7 ms (four pairs, 1.06-1.28x)
    Titans MAL        5,643 faults         87.2 -> 64.1 ms
    LSAM              3,184-3,984 faults   44.0-50.5 -> 35.4-37.3 ms

With both thresholds below raised, the same steps fault 0-3 times. The price: memory a step freed
stays with the process (up to trim_threshold of free heap at its top) rather than going back to the
system, so the resident size stays near its high-water mark.

Both thresholds must be set: setting either one switches off glibc's adaptive mmap threshold, and
each alone left 640-2,600 faults per step in the measurements above.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1               # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 * 2 ** 20      # free memory kept at the top of the heap before any is returned
MMAP_THRESHOLD = 32 * 2 ** 20       # arrays up to this size come from the heap (glibc's maximum on 64-bit)

# environment variables through which a user has already chosen malloc's behaviour (read by glibc at
# process start); if any is set, keep_freed_memory_by_default leaves malloc alone
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory(trim_threshold: int = TRIM_THRESHOLD, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Raise glibc's trim and mmap thresholds for this process (mallopt). Returns True if both were
    set, False where there is no glibc mallopt (other systems and C libraries: nothing changes).

    Args:
        trim_threshold: bytes of free memory at the top of the heap kept before any is returned.
        mmap_threshold: allocations up to this size are served from the heap, not by mmap
            (glibc refuses more than 32 MiB on 64-bit systems).
    """
    for name, value in (("trim_threshold", trim_threshold), ("mmap_threshold", mmap_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 31:
            raise ValueError(f"{name} must be an integer number of bytes in [1, 2^31); got {value!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


def keep_freed_memory_by_default() -> bool:
    """What `import minimem` does: keep_freed_memory(), unless MINIMEM_KEEP_FREED_MEMORY=0 or the
    user already tuned malloc (any of USER_SETTINGS, or GLIBC_TUNABLES naming malloc). Returns
    whether the thresholds were set."""
    if os.environ.get("MINIMEM_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return keep_freed_memory()
