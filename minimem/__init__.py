"""minimem: memory-augmented neural networks in plain NumPy, every backward pass derived by hand
and checked by finite differences against an autodiff twin.

Importing minimem before NumPy makes the BLAS library run on one thread unless you chose otherwise
(OPENBLAS_NUM_THREADS, OMP_NUM_THREADS or MKL_NUM_THREADS already set are left alone). minimem's
matrices are small, and on a 2-core machine BLAS threads cost more than they give: an LSTM forward +
backward (T=50, B=16, H=128) measured 0.38 s with OpenBLAS's default threads and 0.088 s with one.
The variables only take effect if NumPy has not been imported yet, which is why the demos import
minimem first.
"""

import os as _os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_name, "1")

__version__ = "0.1.0"
