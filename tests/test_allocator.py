"""minimem.allocator: glibc's malloc keeps the memory a training step frees (import minimem does
this by default), so the next step does not fault every page in again."""

import subprocess
import sys
import textwrap

import pytest

import minimem
from minimem import allocator

# a step-like loop: two fresh (T B, 4H) arrays per round (a product and its sum with a bias, as an
# LSTM's hoisted input projection), both freed at the end of the round; prints minor faults per round
FAULTS_PER_ROUND = textwrap.dedent("""
    import minimem, resource
    import numpy as np
    a, w, b = np.ones((800, 32)), np.ones((32, 512)), np.ones(512)
    for _ in range(3):
        y = a @ w + b
    del y
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        y = a @ w + b
        del y
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20, minimem.KEEPS_FREED_MEMORY)
""")


def _faults_per_round(env_extra: dict) -> tuple[float, str]:
    import os
    env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS and k != "MINIMEM_KEEP_FREED_MEMORY"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND], capture_output=True, text=True, env=env, check=True)
    faults, kept = out.stdout.split()
    return float(faults), kept


@pytest.mark.skipif(not minimem.KEEPS_FREED_MEMORY, reason="no glibc mallopt here (or malloc tuned by the user)")
def test_importing_minimem_stops_the_page_faults_of_a_step_that_frees_its_arrays():
    kept_faults, kept = _faults_per_round({})
    default_faults, default = _faults_per_round({"MINIMEM_KEEP_FREED_MEMORY": "0"})
    assert (kept, default) == ("True", "False")
    assert kept_faults < 5                     # measured 0
    assert default_faults > 200                # measured ~1,600: both 3.2 MB arrays fault in every round


def test_keep_freed_memory_by_default_leaves_a_users_malloc_settings_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MINIMEM_KEEP_FREED_MEMORY", raising=False)
    assert allocator.keep_freed_memory_by_default() and calls == [1]
    monkeypatch.setenv("MINIMEM_KEEP_FREED_MEMORY", "0")
    assert not allocator.keep_freed_memory_by_default()
    monkeypatch.delenv("MINIMEM_KEEP_FREED_MEMORY")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert not allocator.keep_freed_memory_by_default()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")
    assert not allocator.keep_freed_memory_by_default()
    assert calls == [1]


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, 1.5, True, "1"])
def test_keep_freed_memory_rejects_sizes_mallopt_cannot_take(bad):
    with pytest.raises(ValueError, match="number of bytes"):
        allocator.keep_freed_memory(trim_threshold=bad)
    with pytest.raises(ValueError, match="number of bytes"):
        allocator.keep_freed_memory(mmap_threshold=bad)
