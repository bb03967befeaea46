"""What the benchmark scripts share, so that each script reads as the experiment it runs.

* **processes**: a worker is this or another script run in a fresh interpreter; it
  answers with ``RESULT {json}`` lines (:func:`reply`), read by :func:`run_once` (one
  answer) or a :class:`Worker` (driven line by line, so several can be interleaved
  step by step and see the same machine load); :func:`worker_env` sizes every
  thread pool and passes the malloc setting, which a worker applies with
  :func:`apply_malloc_setting`;
* **memory**: :func:`current_rss_mb`, :func:`peak_rss_mb`;
* **timing**: :func:`time_call_ms` (the median of repeated calls), :func:`median_ms`
  and :func:`spread` of measured seconds;
* **the machine**: :func:`cpu_model`, :func:`git_state`, :func:`blas_runtime_info`;
* **tables**: :func:`markdown_row`, :func:`markdown_table`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT_TAG = "RESULT "
MALLOC_VARIABLE = "MINISYNTH_BENCH_MALLOC"


# -------------------------------------------------------------------------- processes
def worker_env(threads=None, malloc="reuse", numba_cache_dir=None, pythonpath=None):
    """The environment of a worker: every thread pool sized ``threads`` (unless None), the
    malloc setting (``"reuse"``: as the ``minisynth`` command, see
    :func:`apply_malloc_setting`), optionally a Numba cache folder and a PYTHONPATH entry
    in front. OPENBLAS_CORETYPE and the rest of the environment are kept."""
    env = dict(os.environ)
    env[MALLOC_VARIABLE] = malloc
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS"):  # fmt: skip
            env[var] = str(threads)
    if numba_cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = numba_cache_dir
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


def apply_malloc_setting():
    """In a worker: keep freed memory for reuse, as ``minisynth train`` does, if the
    parent asked for it (:func:`worker_env`)."""
    if os.environ.get(MALLOC_VARIABLE, "reuse") == "reuse":
        try:
            from minisynth.fast.allocator import reuse_freed_memory
        except ImportError:  # an older checkout
            from minisynth.allocator import reuse_freed_memory
        reuse_freed_memory()


def reply(obj):
    """In a worker: answer the parent with one ``RESULT {json}`` line."""
    print(RESULT_TAG + json.dumps(obj), flush=True)


def _result(line):
    return json.loads(line[len(RESULT_TAG) :]) if line.startswith(RESULT_TAG) else None


def run_once(argv, env=None, cwd=ROOT):
    """Run ``argv`` to its end; return its first ``RESULT`` answer, or raise with its stderr."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd)
    for line in proc.stdout.splitlines():
        if (answer := _result(line)) is not None:
            return answer
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise RuntimeError(f"worker {argv[1:3]} failed (exit {proc.returncode}):\n{tail}")


class Worker:
    """A worker process driven line by line: :meth:`ask` sends a command, returns its answer."""

    def __init__(self, argv, env, name):
        self.name = name
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file: a full pipe would block it
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, cwd=ROOT)  # fmt: skip
        self.reply()  # wait until set up

    def reply(self):
        for line in self.proc.stdout:
            if (answer := _result(line)) is not None:
                return answer
        self.proc.wait()
        self.stderr.seek(0)
        tail = "\n".join(self.stderr.read().strip().splitlines()[-15:])
        raise RuntimeError(f"{self.name} worker failed (exit {self.proc.returncode}):\n{tail}")

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()  # only ever this worker, which the script started
            self.proc.wait()
        self.stderr.close()


# ----------------------------------------------------------------------------- memory
def _proc_status_mb(field):
    """A memory field of /proc/self/status in MB (None where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb():
    """Resident memory of this process now (MB); 0 where /proc is unavailable."""
    return _proc_status_mb("VmRSS") or 0.0


def peak_rss_mb():
    """Peak resident memory of this process so far (MB).

    VmHWM first: Linux carries ``ru_maxrss`` across fork + exec, so a worker's
    ru_maxrss would start at its parent's peak (the parent has torch and Numba
    loaded); VmHWM belongs to the worker's own address space. ru_maxrss (KiB on
    Linux, bytes on macOS) is the fallback elsewhere.
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


# ----------------------------------------------------------------------------- timing
def time_call_ms(fn, repeat, before=None):
    """Median wall time of ``fn()`` over ``repeat`` calls, in ms (``before()`` runs untimed
    ahead of each call)."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def median_ms(seconds):
    return 1e3 * statistics.median(seconds)


def spread(seconds):
    """(max - min) / median: how noisy the repeats were."""
    return (max(seconds) - min(seconds)) / statistics.median(seconds)


# ------------------------------------------------------------------------ the machine
def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state():
    """Commit and whether minisynth/ has uncommitted changes (other work may be in progress)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "minisynth"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        changed = sorted({line[3:] for line in dirty if line.strip()})
    except OSError:
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def blas_runtime_info():
    """What NumPy's BLAS runs with, as threadpoolctl (minisynth's own dependency) finds it.

    The kernel OpenBLAS picks at run time (e.g. Haswell vs SkylakeX) depends on the
    CPU and on OPENBLAS_CORETYPE, so the build-time summary alone is not enough.
    """
    import numpy as np

    from minisynth.fast.threads import blas_info

    infos = blas_info()
    if infos:
        i = infos[0]
        return (
            f"{i.get('internal_api')} {i.get('version')}, core {i.get('architecture')}, "
            f"{i.get('num_threads')} threads (threadpoolctl)"
        )
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return f"{blas.get('name')} {blas.get('version')} (build-time info: np.show_config)"


# ----------------------------------------------------------------------------- tables
def markdown_row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header, rows, formats):
    """A Markdown table as text; ``formats`` are format specs, one per column (text
    columns, spec "", are left-aligned, numbers right-aligned)."""
    cells = [[format(v, f) for v, f in zip(row, formats, strict=True)] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(header, *cells, strict=True)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    for row in cells:
        columns = zip(row, widths, formats, strict=True)
        lines.append("| " + " | ".join(c.ljust(w) if not f else c.rjust(w) for c, w, f in columns)
                     + " |")  # fmt: skip
    return "\n".join(lines)
