"""minimem: memory-augmented neural networks in plain NumPy, every backward pass derived by hand
and checked by finite differences against an autodiff twin.

Importing minimem before NumPy makes the BLAS library run on one thread unless you chose otherwise
(OPENBLAS_NUM_THREADS, OMP_NUM_THREADS or MKL_NUM_THREADS already set are left alone). minimem's
matrices are small, and on a 2-core machine BLAS threads cost more than they give: an LSTM forward +
backward (T=50, B=16, H=128) measured 0.38 s with OpenBLAS's default threads and 0.088 s with one.
The variables only take effect if NumPy has not been imported yet, which is why the demos import
minimem first.

Importing minimem also keeps freed memory in the process for reuse (glibc's malloc trim and mmap
thresholds raised to 256 MiB and 32 MiB; see minimem/allocator.py), unless MINIMEM_KEEP_FREED_MEMORY=0
or malloc was already tuned through its own environment variables. A training step frees its arrays
at its end and allocates them again in the next; handed back to the system in between, every page
faulted in again: on a 2-core VM the manual engine's step at the demo sizes took 1.3-2x longer
(NAM Transformer 15.3 -> 7.8 ms, HMA head 18.7 -> 10.7 ms, Titans MAL 87 -> 64 ms). The price is a
resident size that stays near its high-water mark.
"""

import os as _os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_name, "1")

from minimem.allocator import keep_freed_memory_by_default as _keep_freed_memory_by_default  # noqa: E402

KEEPS_FREED_MEMORY = _keep_freed_memory_by_default()   # True where glibc's thresholds were raised

__version__ = "0.1.0"
