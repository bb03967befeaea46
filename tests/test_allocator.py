"""minisynth.fast.allocator: freed training temporaries are reused instead of page-faulted anew.

Each case runs in a fresh interpreter, since the setting is process-wide.
"""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

LOOP = """
import resource, sys
import numpy as np
from minisynth.fast.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else None
a = np.ones(3_000_000, np.float32); del a  # the first use may fault in any case
big = 10_000_000  # 40 MB: above the largest mmap threshold glibc accepts (32 MiB)
a = np.ones(big, np.float32); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):  # 12 MB and 40 MB temporaries per "step", as a training loop makes
    a = np.ones(3_000_000, np.float32)
    b = np.ones(big, np.float32)
    del a, b
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run_loop(mode, **env):
    proc = subprocess.run(
        [sys.executable, "-c", LOOP, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = proc.stdout.split()
    return applied, int(faults)


def test_tuned_malloc_stops_refaulting_freed_memory():
    applied, tuned = run_loop("tuned")
    _, default = run_loop("default")
    if applied != "True":
        pytest.skip("this C library refused mallopt")
    # glibc's defaults give the memory back every step (NumPy may use huge pages,
    # so count faults, not bytes); tuned, the loop faults at most on its first step
    assert default > 1000
    assert tuned < default / 10


THREADS = """
import sys, threading
import numpy as np
from minisynth.fast.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else None


def peak_kb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])


a = np.ones(10_000_000, np.float32); del a  # 40 MB the main thread frees
before = peak_kb()
thread = threading.Thread(target=lambda: np.ones(10_000_000, np.float32))  # a shard's temporary
thread.start(); thread.join()
print(applied, peak_kb() - before)
"""


def test_tuned_malloc_shares_freed_memory_between_threads():
    """One heap for every thread: what the main thread freed, a shard thread reuses. With an
    arena per thread the thread's 40 MB would be new memory, and the process's peak grow."""
    proc = subprocess.run([sys.executable, "-c", THREADS, "tuned"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    applied, growth_kb = proc.stdout.split()
    if applied != "True":
        pytest.skip("this C library refused mallopt")
    assert int(growth_kb) < 10_000


def test_opt_out_leaves_malloc_alone():
    applied, faults = run_loop("tuned", MINISYNTH_MALLOC="default")
    assert applied == "False"
    assert faults > 1000


def test_the_minisynth_command_applies_it(monkeypatch, tmp_path):
    import minisynth.fast.allocator as allocator
    from minisynth import cli

    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["sample", "--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert calls == [1]
