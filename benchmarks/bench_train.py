"""Benchmark: a whole training step of minisynth (Numba and NumPy backends) against PyTorch eager.

Run from the repository root (a script, not a test)::

    python benchmarks/bench_train.py [--quick] [--repeats 7] [--markdown FILE]
                                     [--configs bench,long] [--kinds vanilla,random]

For every config and attention kind it times, in float32 with ``--threads``
threads everywhere (NumPy's BLAS, ``numba.set_num_threads``, ``torch.set_num_threads``):

* one full training step as :func:`minisynth.train.train` does it: forward,
  backward, global-norm clipping to 1.0, AdamW (lr 3e-3, weight decay 0.1);
* forward + backward alone (``model.loss_and_grads`` / ``loss.backward()``);

for (a) minisynth on the Numba backend, (b) minisynth on the NumPy backend,
(c) :mod:`minisynth.torch_model`, the package's PyTorch twin (eager), built from the
same weights. Each path runs in a fresh subprocess (``--warmup`` steps, then
``--repeats`` timed steps and forward+backward calls, interleaved so both see the
same machine load), which gives per path:

* the median times (ms) and the ratios numba/torch and numba/numpy;
* the first-step overhead: the very first step in the fresh process minus the
  median warm step. For Numba that is JIT compilation, or loading the compiled
  kernels from Numba's on-disk cache; the table says which (cache hits/misses
  of the kernel dispatchers). The header also gives one cold compile, timed
  with an empty cache directory;
* the process's peak resident memory (``ru_maxrss``), with the RSS after
  imports and model set-up in brackets, so library footprints (torch's is
  large) can be told apart from the step's working memory;
* achieved GFLOP/s: analytic training FLOPs (below) / median forward+backward
  time, against the machine's float32 matmul rate (a 2048^3 product with the
  same threads, NumPy's BLAS and torch's).

Every worker, torch's included, runs with the allocator setting that ``minisynth
train`` uses (``--malloc reuse``: :mod:`minisynth.fast.allocator` keeps freed memory for
reuse instead of page-faulting it back in every step); ``--malloc default`` keeps
the C library's defaults for all paths.

Before any timing, torch's loss must equal minisynth's (both backends) on the
transplanted weights to float32 rounding, or the script stops: a fast wrong
model is no baseline. Without torch installed the minisynth columns still run
(torch comes with the ``bench`` extra).

FLOP count (matmuls only, full T x T attention with the masked half included,
as PyTorch and minisynth's NumPy path compute it; minisynth's Numba path skips the
blocks above the diagonal in the products with a causal map: P @ v, P^T @ do,
dS @ k, dS^T @ q and Dense's dS @ W2^T, dS^T @ hid, so its GFLOP/s is an
effective rate over the same count). N = B*T tokens, hs = C/H; per block, forward:

    value + output projections   2 * 2 N C^2
    MLP (C -> 4C -> C)           2 * 2 N C (4C)          = 16 N C^2
    P @ v                        2 B T^2 C
    vanilla                      2 * 2 N C^2 (q, k) + 2 B T^2 C (q k^T)
    dense                        2 N C^2 (W1) + 2 B T^2 C (hid @ W2[:, :, :T])
    factorized_dense             2 N C^2 (W1) + 2 N C (a + b) (hid @ Wa, hid @ Wb)
    factorized_random            2 H T^2 k (R1 R2^T)
    random, random_fixed         0 (the logits are parameters)
    mixtures                     the sum of their components

plus the tied head 2 N C V. Backward costs twice each forward matmul (gradients of
both operands), except P @ v under random_fixed alone, whose dP is not needed
(nothing upstream trains): once. Training FLOPs = forward + backward. Softmax,
layer norm, GELU, the loss and AdamW are elementwise and not counted, so GFLOP/s
understates the work of attention-heavy configs (softmax over B H T^2 logits).

Timings are wall-clock. Run on an idle machine: with 2 threads on 2 cores, one
other busy process makes spin-synchronised thread pools (OpenBLAS, torch's and
Numba's OpenMP) stall, by 10x or more on some shapes (a 256 x 4096 x 256 matmul
went from 2 ms to 87 ms). The load average is printed before and after, the
matmul rate is measured before and after the rows (the better one is the
reference), and the "spread" column is (max - min) / median of the noisiest path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (
    Worker,
    apply_malloc_setting,
    blas_runtime_info,
    cpu_model,
    current_rss_mb,
    git_state,
    median_ms,
    peak_rss_mb,
    reply,
    run_once,
    spread,
    worker_env,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATHS = ("numba", "numpy", "torch")
LR, WEIGHT_DECAY, GRAD_CLIP = 3e-3, 0.1, 1.0  # minisynth.train.TrainConfig defaults
LOSS_RTOL = 1e-4  # float32 rounding through a few blocks is ~1e-6; a wrong model is off by >1e-2


@dataclass(frozen=True)
class BenchConfig:
    """One model size and batch, and the attention kinds to time on it."""

    name: str
    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int
    max_len: int
    T: int
    B: int
    kinds: tuple

    def model_kwargs(self, kind):
        return dict(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            max_len=self.max_len,
            attention=kind,
        )

    @property
    def label(self):
        return f"{self.name} B{self.B} T{self.T}"


BENCH_KINDS = ("vanilla", "dense", "random", "factorized_random", "dense+vanilla")
LONG_KINDS = ("vanilla", "random")
CONFIGS = {
    "bench": BenchConfig("bench", 256, 256, 8, 4, 256, 256, 16, BENCH_KINDS),
    "long": BenchConfig("long", 256, 256, 8, 4, 1024, 1024, 4, LONG_KINDS),
}
# --quick: the same kinds and code paths on models small enough for a smoke run
QUICK_CONFIGS = {
    "bench": BenchConfig("bench", 256, 64, 4, 2, 64, 64, 4, BENCH_KINDS),
    "long": BenchConfig("long", 256, 64, 4, 2, 256, 256, 1, LONG_KINDS),
}


# ------------------------------------------------------------------------- FLOPs
def component_flops(kind, cfg):
    """Forward matmul FLOPs of one attention component's logits in one block."""
    N, C, H, T, B = cfg.B * cfg.T, cfg.d_model, cfg.n_heads, cfg.T, cfg.B
    if kind == "vanilla":
        return 2 * 2 * N * C * C + 2 * B * T * T * C
    if kind == "dense":
        return 2 * N * C * C + 2 * B * T * T * C
    if kind == "factorized_dense":
        from minisynth.attention import default_factors

        a, b = default_factors(cfg.max_len)
        return 2 * N * C * C + 2 * N * C * (a + b)
    if kind == "factorized_random":
        return 2 * H * T * T * 8  # k = 8, minisynth's default
    if kind in ("random", "random_fixed"):
        return 0
    raise ValueError(f"unknown attention kind {kind!r}")


def training_flops(kind, cfg):
    """(forward, forward + backward) matmul FLOPs of one step; see the module docstring."""
    N, C, V, T, B = cfg.B * cfg.T, cfg.d_model, cfg.vocab_size, cfg.T, cfg.B
    parts = kind.split("+")
    per_block = 2 * 2 * N * C * C + 16 * N * C * C  # value/output projections, MLP
    per_block += sum(component_flops(p, cfg) for p in parts)
    pv = 2 * B * T * T * C  # P @ v
    forward = cfg.n_layers * (per_block + pv) + 2 * N * C * V  # + tied head
    pv_backward = pv if parts == ["random_fixed"] else 2 * pv  # dv only when S is frozen
    backward = 2 * (forward - cfg.n_layers * pv) + cfg.n_layers * pv_backward
    return forward, forward + backward


# ----------------------------------------------------------------- worker helpers
def make_batch(cfg, seed=0):
    """Real text: B random windows of the bundled enwik8 prefix (x, and y shifted by one)."""
    import numpy as np

    from minisynth.data import get_batch, load_data

    splits, _ = load_data("bundled")
    return get_batch(splits["train"], cfg.B, cfg.T, np.random.default_rng(seed))


def build_model(cfg, kind, backend="numpy"):
    """The float32 minisynth model every path starts from (seed 0, so all paths share weights)."""
    import numpy as np

    from minisynth import ModelConfig, SynthesizerLM

    model_config = ModelConfig(**cfg.model_kwargs(kind))
    return SynthesizerLM(model_config, seed=0, dtype=np.float32, backend=backend)


def numba_cache_stats():
    """(hits, misses) of Numba's on-disk cache over the kernel dispatchers, once they ran."""
    from numba.core.dispatcher import Dispatcher

    import minisynth.fast.kernels as kernels

    hits = misses = 0
    for obj in vars(kernels).values():
        if isinstance(obj, Dispatcher):
            hits += sum(obj.stats.cache_hits.values())
            misses += sum(obj.stats.cache_misses.values())
    return hits, misses


def setup_path(spec):
    """Build one path's model, batch and optimizer; return (step, forward_backward, facts).

    ``step()`` is a whole training step and ``forward_backward()`` the loss and
    gradients alone; both return the loss.
    """
    path, threads = spec["path"], spec["threads"]
    cfg = BenchConfig(**{**spec["config"], "kinds": tuple(spec["config"]["kinds"])})
    from minisynth import backend, fast
    from minisynth.optim import AdamW, clip_grad_norm

    code = "numpy" if path == "torch" else path  # torch starts from the reference's weights
    model = build_model(cfg, spec["kind"], backend=code)
    x, y = make_batch(cfg)
    optimizer = AdamW(model.params, lr=LR, weight_decay=WEIGHT_DECAY, backend=code)
    facts = {}
    if path == "torch":
        import torch

        from minisynth import torch_model as tr

        torch.set_num_threads(threads)
        tmodel = tr.SynthesizerTorch.from_minisynth(model)
        toptimizer = tr.adamw_like(tmodel, optimizer)
        del model, optimizer  # torch holds copies; keep the peak RSS torch's own
        xt, yt = tr.as_index_tensor(x), tr.as_index_tensor(y)
        facts["torch_threads"] = torch.get_num_threads()

        def step():
            return tr.train_step(tmodel, toptimizer, xt, yt, lr=LR, max_norm=GRAD_CLIP)

        def forward_backward():
            tmodel.zero_grad(set_to_none=True)
            _, loss = tmodel(xt, yt)
            loss.backward()
            return float(loss.detach())

        return step, forward_backward, facts

    if model.backend != path:
        raise RuntimeError(
            f"asked for the {path} backend, got {model.backend}: {backend.numba_problem()}"
        )
    if path == "numba":
        import numba

        from minisynth.fast import threads as fast_threads

        numba.set_num_threads(threads)
        facts["numba_threads"] = numba.get_num_threads()
        facts["split_threads"] = fast_threads.thread_count()

    def step():  # as minisynth.train: the batch split over threads on the fast path
        loss, grads = fast.loss_and_grads(model, x, y)
        clip_grad_norm(grads, GRAD_CLIP)
        optimizer.step(grads, lr=LR)
        return loss

    def forward_backward():
        return fast.loss_and_grads(model, x, y)[0]

    return step, forward_backward, facts


def run_worker(spec):
    """Serve one path in this fresh process: set up, then run what the parent asks on stdin.

    Commands, one per line: ``first`` (the very first step: compiles or loads the
    Numba kernels), ``step``, ``fb`` (forward + backward), ``done`` (report and
    exit). Each is answered by one ``RESULT {json}`` line, so the parent can
    interleave several workers step by step and they all see the same machine load.
    """
    apply_malloc_setting()  # every path alike, torch's too
    step, forward_backward, facts = setup_path(spec)
    setup_rss = current_rss_mb()
    reply({"ready": True})
    loss = float("nan")
    for line in sys.stdin:
        command = line.strip()
        if command == "done":
            break
        fn = forward_backward if command == "fb" else step
        start = time.perf_counter()
        loss = float(fn())
        answer = {"seconds": time.perf_counter() - start, "loss": loss}
        if command == "first" and spec["path"] == "numba":
            import numba

            answer["cache_hits"], answer["cache_misses"] = numba_cache_stats()
            answer["threading_layer"] = numba.threading_layer()
        reply(answer)
    facts.update(setup_rss_mb=setup_rss, peak_rss_mb=peak_rss_mb(), last_loss=loss)
    reply(facts)


def run_matmul_worker(spec):
    """Measure the float32 matmul rate (GFLOP/s) of NumPy's BLAS and of torch, with the threads."""
    import numpy as np

    n, threads = spec["n"], spec["threads"]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2 * n**3

    def rate(fn):
        fn()  # warm-up: thread pools start, pages are touched
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return flops / min(times) / 1e9  # best of: the machine's rate, not its load

    out = {"numpy_gflops": rate(lambda: a @ b), "blas": blas_runtime_info()}
    if spec["torch"]:
        import torch

        torch.set_num_threads(threads)
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        out["torch_gflops"] = rate(lambda: at @ bt)
    reply(out)


# ----------------------------------------------------------------- parent helpers
def start_worker(spec, env):
    """A :func:`run_worker` process of this script for one path (harness.Worker)."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    return Worker(argv, env, spec["path"])


def measure(cfg, kind, paths, args, env):
    """Time every path on one config and kind, interleaved step by step; {path: result}.

    All workers are set up first; then each round gives every path one step
    and one forward+backward, in an order that rotates from round to round, so
    a change of machine load hits all paths alike and no path always follows
    the same one. ``--settle`` seconds of sleep before each timed call let the
    previous worker's BLAS / OpenMP threads stop spinning (OpenBLAS spins for
    up to ~0.1 s after a call) before the next one starts.
    """
    spec = dict(config=dataclasses.asdict(cfg), kind=kind, threads=args.threads)
    workers, results = {}, {}
    try:
        for path in paths:
            try:
                workers[path] = start_worker({**spec, "path": path}, env)
                results[path] = {"path": path, "step_s": [], "fwd_bwd_s": []}
            except RuntimeError as err:
                print(f"  {cfg.label} {kind} {path}: FAILED\n{err}", flush=True)

        def run(path, command):
            time.sleep(args.settle)
            try:
                return workers[path].ask(command)
            except RuntimeError as err:
                print(f"  {cfg.label} {kind} {path}: FAILED\n{err}", flush=True)
                workers.pop(path).close()
                results.pop(path)
                return None

        for path in list(workers):
            r = run(path, "first")
            if r:
                results[path].update(first_step_s=r["seconds"], first_loss=r["loss"])
                results[path].update({k: r[k] for k in r if k not in ("seconds", "loss")})
        for _ in range(args.warmup - 1):
            for path in list(workers):
                run(path, "step")
        for path in list(workers):
            run(path, "fb")  # its own warm-up: fwd+bwd alone allocates differently
        for i in range(args.repeats):
            order = list(workers)
            order = order[i % len(order) :] + order[: i % len(order)] if order else order
            for path in order:
                for command, key in (("step", "step_s"), ("fb", "fwd_bwd_s")):
                    if path in workers and (r := run(path, command)):
                        results[path][key].append(r["seconds"])
        for path in list(workers):
            r = run(path, "done")
            if r:
                results[path].update(r)
    finally:
        for worker in workers.values():
            worker.close()
    return results


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def check_losses(configs, threads):
    """Torch's loss must equal minisynth's (both backends) on transplanted weights; else exit.

    Returns the worst relative difference seen.
    """
    import numpy as np
    import torch

    from minisynth.torch_model import SynthesizerTorch

    torch.set_num_threads(threads)
    worst = 0.0
    for cfg in configs:
        for kind in cfg.kinds:
            x, y = make_batch(cfg)
            t_loss = SynthesizerTorch.from_minisynth(build_model(cfg, kind)).loss(x, y)
            for backend_name in ("numpy", "numba"):
                model = build_model(cfg, kind, backend=backend_name)
                active = model.backend
                loss = model.loss(x, y)
                diff = abs(loss - t_loss) / abs(t_loss)
                worst = max(worst, diff)
                if not (np.isfinite(loss) and diff <= LOSS_RTOL):
                    sys.exit(
                        f"ABORT: {cfg.label} {kind}: minisynth ({active}) loss {loss:.7f} != "
                        f"torch {t_loss:.7f} (rel diff {diff:.1e} > {LOSS_RTOL:.0e}); "
                        "the two models differ, so timing them would compare different work"
                    )
            print(f"  check {cfg.label:<16} {kind:<18} loss {t_loss:.5f}  ok", flush=True)
    return worst


# --------------------------------------------------------------------- reporting
def fmt_ms(r, key):
    return f"{median_ms(r[key]):.0f}" if r else "n/a"


def fmt_ratio(a, b, key):
    return f"{median_ms(a[key]) / median_ms(b[key]):.2f}" if a and b else "n/a"


def first_step_cell(r):
    if not r:
        return "n/a"
    extra = r["first_step_s"] - statistics.median(r["step_s"])
    if r["path"] != "numba":
        return f"{extra:.2f}"
    hits, misses = r["cache_hits"], r["cache_misses"]
    state = "warm cache" if misses == 0 else ("cold cache" if hits == 0 else "partly cached")
    return f"{extra:.2f} ({state}: {hits} loaded, {misses} compiled)"


def rss_cell(r):
    return f"{r['peak_rss_mb']:.0f} ({r['setup_rss_mb']:.0f})" if r else "n/a"


def gflops_cell(r, train_flops, peak):
    if not r:
        return "n/a"
    rate = train_flops / statistics.median(r["fwd_bwd_s"]) / 1e9
    return f"{rate:.1f} ({100 * rate / peak:.0f}%)"


def build_report(args, configs, results, info):
    """The markdown report: a header of machine facts, then three tables."""
    lines = [f"## minisynth training step: Numba vs NumPy vs PyTorch ({info['date']})", ""]
    lines += [f"- {k}: {v}" for k, v in info["facts"].items()]
    lines.append("")

    def rows(metric_key):
        out = [
            "| config | kind | numba ms | numpy ms | torch ms "
            "| numba/torch | numba/numpy | spread |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for cfg in configs:
            for kind in cfg.kinds:
                r = {p: results.get((cfg.name, kind, p)) for p in PATHS}
                noise = max((spread(x[metric_key]) for x in r.values() if x), default=0.0)
                out.append(
                    f"| {cfg.label} | {kind} | {fmt_ms(r['numba'], metric_key)} "
                    f"| {fmt_ms(r['numpy'], metric_key)} | {fmt_ms(r['torch'], metric_key)} "
                    f"| {fmt_ratio(r['numba'], r['torch'], metric_key)} "
                    f"| {fmt_ratio(r['numba'], r['numpy'], metric_key)} | {100 * noise:.0f}% |"
                )
        return out

    lines.append(
        f"### Training step (forward, backward, clip, AdamW): median of {args.repeats}, ms"
    )
    lines += ["", *rows("step_s"), ""]
    lines.append(f"### Forward + backward alone: median of {args.repeats}, ms")
    lines += ["", *rows("fwd_bwd_s"), ""]
    peak = info["peak_gflops"]
    lines.append(
        "### FLOPs, compile and memory (GFLOP/s over forward+backward; % of the numpy "
        f"matmul rate {peak:.0f} GFLOP/s)"
    )
    lines += [
        "",
        "| config | kind | train GFLOP | numba GFLOP/s | numpy GFLOP/s | torch GFLOP/s "
        "| first-step extra s: numba | numpy | torch "
        "| peak RSS MB (after setup): numba | numpy | torch |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for cfg in configs:
        for kind in cfg.kinds:
            r = {p: results.get((cfg.name, kind, p)) for p in PATHS}
            _, train = training_flops(kind, cfg)
            lines.append(
                f"| {cfg.label} | {kind} | {train / 1e9:.1f} "
                + " ".join(f"| {gflops_cell(r[p], train, peak)}" for p in PATHS)
                + " "
                + " ".join(f"| {first_step_cell(r[p])}" for p in PATHS)
                + " "
                + " ".join(f"| {rss_cell(r[p])}" for p in PATHS)
                + " |"
            )
    lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------- main
MARKDOWN_PREAMBLE = """# Benchmarks

Written by `{command}` (PyTorch columns: `pip install ".[bench]"`; on the
development machine, `pip install torch==2.13.0`, a CPU build).

Each path runs in its own process and the three paths are interleaved step by
step, so load changes hit them alike. The spread column (max/min - 1 over the
repeats) shows how noisy a shared 2-core machine is: read ratios within about
10% as ties.

"""


def command_line(argv):
    """The command that produced this report, as a user would type it."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python benchmarks/bench_train.py", *args])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="bench,long", help="comma list of: bench, long")
    parser.add_argument(
        "--kinds", default=None, help="comma list of attention kinds (default: per config)"
    )
    parser.add_argument("--paths", default=",".join(PATHS), help="comma list of: numba,numpy,torch")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads for BLAS, Numba, torch")
    parser.add_argument(
        "--malloc",
        choices=("reuse", "default"),
        default="reuse",
        help="glibc malloc in every worker: 'reuse' freed memory as `minisynth train` does "
        "(minisynth.fast.allocator), or the C library's 'default' settings",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every raw timing here (JSON)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.2,
        help="seconds of sleep before each timed call (idle thread pools stop spinning)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny models, 2 repeats, 1 warm-up"
    )
    parser.add_argument(
        "--cold-numba-cache",
        action="store_true",
        help="every Numba worker compiles into an empty cache (default: the package's cache)",
    )
    parser.add_argument(
        "--skip-cold-compile", action="store_true", help="skip the one cold Numba compile timing"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 2), 1
    if args.repeats < 1 or args.warmup < 1 or args.threads < 1:
        parser.error("--repeats, --warmup and --threads must be >= 1")
    table = QUICK_CONFIGS if args.quick else CONFIGS
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(table)}")
    configs = [table[n] for n in names]
    if args.kinds:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        configs = [dataclasses.replace(c, kinds=kinds) for c in configs]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in args.paths if p not in PATHS]
    if bad:
        parser.error(f"unknown path(s) {bad}; choose from {', '.join(PATHS)}")
    return args, configs


def main(argv=None):
    args, configs = parse_args(argv)
    has_torch = torch_available()
    paths = [p for p in args.paths if p != "torch" or has_torch]
    cache = tempfile.mkdtemp(prefix="bench-numba-") if args.cold_numba_cache else None
    env = worker_env(args.threads, args.malloc, cache, pythonpath=HERE)
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()

    import numba
    import numpy as np

    versions = (
        f"python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}"
    )
    if has_torch:
        import torch

        versions += f", torch {torch.__version__}"
        print("checking that torch's loss equals minisynth's on transplanted weights ...")
        worst = check_losses(configs, args.threads)
        check = f"passed for every row (worst relative loss difference {worst:.1e}, float32)"
    else:
        check = "skipped: torch is not installed"
        print(
            "torch is not installed: timing the minisynth columns only "
            "(install it with the bench extra: pip install -e '.[bench]')"
        )

    git = git_state()  # now: others may commit while this runs

    def matmul_rate():
        spec = {"n": 2048, "repeats": 5, "threads": args.threads, "torch": has_torch}
        argv = [sys.executable, __file__, "--matmul-worker", json.dumps(spec)]
        return run_once(argv, worker_env(args.threads, pythonpath=HERE))

    print("measuring the float32 matmul rate ...", flush=True)
    mm_before = matmul_rate()
    cold = "skipped"
    if "numba" in paths and not args.skip_cold_compile:
        print("timing one cold Numba compile (empty cache directory) ...", flush=True)
        cold_args = argparse.Namespace(**{**vars(args), "repeats": 3, "warmup": 1})
        with tempfile.TemporaryDirectory(prefix="bench-numba-cold-") as cache:
            r = measure(
                QUICK_CONFIGS["bench"], "vanilla", ["numba"], cold_args,
                worker_env(args.threads, numba_cache_dir=cache, pythonpath=HERE),
            ).get("numba")  # fmt: skip
        if r:
            compile_s = r["first_step_s"] - statistics.median(r["step_s"])
            cold = (
                f"{compile_s:.1f} s (first step minus a warm step on a tiny model, "
                f"{r['cache_misses']} kernel signatures compiled, float32)"
            )
        else:
            cold = "failed (see above)"

    results = {}
    for cfg in configs:
        for kind in cfg.kinds:
            for path, r in measure(cfg, kind, paths, args, env).items():
                results[(cfg.name, kind, path)] = r
                print(
                    f"  {cfg.label:<16} {kind:<18} {path:<6} step {median_ms(r['step_s']):8.0f} ms"
                    f"  fwd+bwd {median_ms(r['fwd_bwd_s']):8.0f} ms"
                    f"  peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            if args.json:  # after every row, so an interrupted run keeps what it measured
                args.json.write_text(json.dumps([{"key": k, **v} for k, v in results.items()]))

    print("measuring the float32 matmul rate again ...", flush=True)
    mm_after = matmul_rate()
    # the better of the two: a busy machine only ever lowers the rate
    mm = max(mm_before, mm_after, key=lambda m: m["numpy_gflops"])
    numba_r = next((r for r in results.values() if r["path"] == "numba"), None)
    torch_r = next((r for r in results.values() if r["path"] == "torch"), None)
    threads = f"{args.threads} requested; NumPy BLAS {mm['blas']}"
    if numba_r:
        threads += (
            f"; minisynth Numba path: {numba_r['split_threads']} threads of its own "
            "(minisynth.fast.threads: the batch split into shards, OpenBLAS single-threaded "
            f"in each; Numba's pool, {numba_r['numba_threads']} threads, "
            f"{numba_r['threading_layer']} layer, is unused)"
        )
    if torch_r:
        threads += f"; torch {torch_r['torch_threads']} intra-op"
    peak = "; ".join(
        f"{when}: numpy {m['numpy_gflops']:.0f} GFLOP/s"
        + (f", torch {m['torch_gflops']:.0f} GFLOP/s" if "torch_gflops" in m else "")
        for when, m in (("before", mm_before), ("after", mm_after))
    )
    facts = {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical CPUs",
        "threads": threads,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
        "versions": versions,
        "minisynth": git,
        "float32 matmul 2048^3 (best of 5, before and after the rows)": peak,
        "Numba cold compile": cold,
        "Numba cache for the rows": (
            "fresh empty directory per worker (--cold-numba-cache)"
            if args.cold_numba_cache
            else "the package's own (__pycache__); see the first-step column"
        ),
        "loss check (torch vs minisynth, before timing)": check,
        "load average (1 min) before / after": (
            f"{load_before:.2f} / {os.getloadavg()[0]:.2f}; "
            f"whole run {time.perf_counter() - t_start:.0f} s"
        ),
        "settings": (
            f"float32, warm-up {args.warmup} step(s), {args.repeats} repeats, "
            f"AdamW lr {LR} wd {WEIGHT_DECAY}, clip {GRAD_CLIP}; malloc: "
            + (
                "every path reuses freed memory (minisynth.fast.allocator, as `minisynth train`)"
                if args.malloc == "reuse"
                else "the C library's defaults"
            )
            + ("; --quick (tiny models)" if args.quick else "")
        ),
    }
    if not has_torch:
        facts["torch"] = "not installed: its columns are n/a (install with the bench extra)"
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "facts": facts,
        "peak_gflops": mm["numpy_gflops"],
    }
    report = build_report(args, configs, results, info)
    print()
    print(report)
    if args.markdown:
        args.markdown.write_text(
            MARKDOWN_PREAMBLE.format(command=command_line(argv)) + report + "\n"
        )
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        run_worker(json.loads(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--matmul-worker":
        run_matmul_worker(json.loads(sys.argv[2]))
    else:
        main()
