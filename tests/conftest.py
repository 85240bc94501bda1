"""Test-suite settings. Under CI (CI=true) hypothesis runs derandomized, so a red CI is reproducible;
locally it explores new examples on every run. BLAS runs single-threaded, as minimem sets it up (see
minimem/__init__.py): this must happen before anything imports NumPy."""

import os

import minimem  # noqa: F401  (first: sets the BLAS thread count before NumPy loads)

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
