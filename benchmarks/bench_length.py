"""Benchmark: attention at length, the Long Range Arena efficiency table in miniature.

Run from the repository root (a script, not a test; about 15 minutes on 2 cores)::

    python benchmarks/bench_length.py [--kinds vanilla,random] [--lengths 256,1024]
                                      [--markdown BENCHMARKS.md] [--plot benchmarks/length.png]

For every attention kind and sequence length T in 128 ... 4096, at a fixed number
of tokens per batch (B x T = 4096) on the bench model (d_model 256, 8 heads, 4
layers, max_len = T), one whole training step (forward, backward, clipping,
AdamW, as ``minisynth train``) is timed in a fresh process per path:

* ``tiled``: minisynth's fast path with attention in tiles (``tiles="always"``);
* ``full``: the fast path storing every (B,H,T,T) map (``tiles="never"``), which
  was the only path before tiles; skipped at T = 4096, where its maps alone would
  take gigabytes per layer;
* ``torch``: :mod:`minisynth.torch_model` (eager, vanilla through
  ``scaled_dot_product_attention``) from the same weights.

Every worker uses 2 threads and the malloc setting of ``minisynth train``. Reported
per path: the median step time (``--repeats`` steps after one warm-up; fewer at
the long lengths, see ``REPEATS``), steps per second, and memory: the resident
memory after the model and optimizer are set up (parameters, AdamW moments) and
the peak of a step above it (activations, gradients, what the step allocates).
``minisynth train`` itself takes the tiled path from ``TILED_FROM`` positions on
(:func:`minisynth.attention.check_tiles`); the ``full`` and ``tiled`` columns
show why. The log-log slopes of time and step memory against T are fitted by
least squares over the lengths measured.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    ROOT,
    apply_malloc_setting,
    cpu_model,
    current_rss_mb,
    git_state,
    markdown_table,
    peak_rss_mb,
    reply,
    run_once,
    worker_env,
)

from minisynth.attention import TILED_FROM  # noqa: E402

TOKENS = 4096  # B x T of every batch
LENGTHS = (128, 256, 512, 1024, 2048, 4096)
KINDS = ("vanilla", "dense", "random", "factorized_dense", "factorized_random", "dense+vanilla")
PATHS = ("tiled", "full", "torch")
FULL_UP_TO = 2048  # the full path's maps beyond this take gigabytes per layer
REPEATS = {128: 3, 256: 3, 512: 3, 1024: 3, 2048: 2, 4096: 1}  # timed steps per length
THREADS = 2
MARKER = "<!-- bench_length -->"


def bench_config(T):
    from bench_train import BenchConfig

    return BenchConfig("length", 256, 256, 8, 4, T, T, TOKENS // T, KINDS)


# --------------------------------------------------------------------------- worker
def run_worker(spec):
    """One path, one kind, one length, in this fresh process: warm up, time, measure."""
    apply_malloc_setting()
    from bench_train import setup_path

    cfg = bench_config(spec["T"])
    path = "torch" if spec["path"] == "torch" else "numba"
    config = {**cfg.__dict__, "kinds": list(cfg.kinds)}
    step, _, _ = setup_path({"path": path, "threads": THREADS, "config": config,
                             "kind": spec["kind"]})  # fmt: skip
    setup_rss = current_rss_mb()
    step()  # warm-up: Numba kernels load, torch allocates its caches
    seconds = []
    for _ in range(spec["repeats"]):
        time.sleep(0.2)  # idle thread pools stop spinning
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    reply({"seconds": seconds, "setup_mb": setup_rss, "peak_mb": peak_rss_mb()})


def measure(path, kind, T, processes=1):
    """One cell: its median step time and peak step memory, each the median over
    ``processes`` fresh processes (a process's peak memory varies with how glibc's heaps
    fill: by up to about 90 MB at T = 2048)."""
    env = worker_env(threads=THREADS)
    env["MINISYNTH_TILES"] = {"tiled": "always", "full": "never"}.get(path, "never")
    env["MINISYNTH_MAX_BYTES"] = str(64 * 2**30)  # Random's R at T = 4096 is 2 GB of weights
    spec = {"path": path, "kind": kind, "T": T, "repeats": REPEATS[T]}
    answers = [run_once([sys.executable, __file__, "--worker", json.dumps(spec)], env=env)
               for _ in range(processes)]  # fmt: skip
    step_ms = [1000 * statistics.median(a["seconds"]) for a in answers]
    step_mb = [a["peak_mb"] - a["setup_mb"] for a in answers]
    return {"step_ms": statistics.median(step_ms), "setup_mb": answers[0]["setup_mb"],
            "step_mb": statistics.median(step_mb), "repeats": len(answers[0]["seconds"]),
            "step_ms_each": step_ms, "step_mb_each": step_mb}  # fmt: skip


# --------------------------------------------------------------------------- report
def slope(lengths, values):
    """Least-squares slope of log(value) against log(T)."""
    xs = [math.log(t) for t in lengths]
    ys = [math.log(max(v, 1e-9)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def parameter_count(kind, T):
    """Trainable parameters of the bench model of ``kind`` at max_len T."""
    from minisynth.model import ModelConfig, parameter_shapes

    params, _ = parameter_shapes(ModelConfig(**bench_config(T).model_kwargs(kind)))
    return sum(math.prod(shape) for shape in params.values())


PARAMETER_STATE_BYTES = 12  # float32 gradient and two AdamW moments, per parameter


def _cell(results, path, kind, T, field):
    record = results.get(f"{path}|{kind}|{T}")
    if record is None:
        return None
    if field == "activation_mb":  # the step's memory less its parameter-sized state
        state = PARAMETER_STATE_BYTES * parameter_count(kind, T) / 2**20
        return max(record["step_mb"] - state, 0.0)
    if field == "params_m":
        return parameter_count(kind, T) / 1e6
    return record.get(field)


def tables(results, kinds, lengths):
    """The efficiency tables (markdown) and the slopes."""
    out = []
    for field, title, fmt in (
        ("step_ms", "Steps per second (relative to vanilla on the same path)", "speed"),
        ("step_mb", "Peak memory of a step above the set-up model, MB (relative to vanilla)",
         "mem"),
        ("activation_mb", "Activations, MB: the step's peak less 12 bytes per parameter "
         "(its gradient and two AdamW moments, first written in the step)", "mem"),
        ("setup_mb", "Resident memory after set-up (weights and libraries), MB", "plain"),
        ("params_m", "Parameters (millions)", "plain"),
    ):  # fmt: skip
        header = ["kind", "path"] + [f"T={T}" for T in lengths]
        rows = []
        for kind in kinds:
            for path in ("tiled",) if field == "params_m" else PATHS:
                cells = []
                for T in lengths:
                    value = _cell(results, path, kind, T, field)
                    base = _cell(results, path, "vanilla", T, field)
                    if value is None:
                        cells.append("n/a")
                    elif fmt == "speed":
                        rel = f" ({base / value:.2f}x)" if base else ""
                        cells.append(f"{1000 / value:.2f}{rel}")
                    elif fmt == "mem":
                        rel = f" ({value / base:.2f}x)" if base and kind != "vanilla" else ""
                        cells.append(f"{value:,.0f}{rel}")
                    elif field == "params_m":
                        cells.append(f"{value:.2f}")
                    else:
                        cells.append(f"{value:,.0f}")
                rows.append([kind, path] + cells)
        out.append(
            f"#### {title}\n\n" + markdown_table(header, rows, ["", ""] + [">"] * len(lengths))
        )
    # ratios to torch
    header = ["kind"] + [f"T={T}" for T in lengths]
    rows = []
    for kind in kinds:
        cells = []
        for T in lengths:
            ours = _cell(results, "tiled" if T >= TILED_FROM else "full", kind, T, "step_ms")
            theirs = _cell(results, "torch", kind, T, "step_ms")
            cells.append(f"{ours / theirs:.2f}" if ours and theirs else "n/a")
        rows.append([kind] + cells)
    out.append("#### minisynth's step time over PyTorch's (the path `minisynth train` takes: "
               f"full below T = {TILED_FROM}, tiles from there)\n\n"
               + markdown_table(header, rows, [""] + [">"] * len(lengths)))  # fmt: skip
    header = ["kind", "path", "time slope", "step-memory slope", "activation slope"]
    rows = []
    for kind in kinds:
        for path in PATHS:
            Ts = [T for T in lengths if _cell(results, path, kind, T, "step_ms")]
            if len(Ts) >= 2:
                times = [_cell(results, path, kind, T, "step_ms") for T in Ts]
                memory = [max(_cell(results, path, kind, T, "step_mb"), 1) for T in Ts]
                active = [max(_cell(results, path, kind, T, "activation_mb"), 1) for T in Ts]
                rows.append([kind, path, f"{slope(Ts, times):.2f}", f"{slope(Ts, memory):.2f}",
                             f"{slope(Ts, active):.2f}"])  # fmt: skip
    out.append("#### Log-log slopes against T (B x T fixed: 0 is flat, 1 is linear in T)\n\n"
               + markdown_table(header, rows, ["", "", ">", ">", ">"]))  # fmt: skip
    return "\n\n".join(out)


def reading(results, kinds, lengths):
    """What the tables say, in words computed from them."""

    def cell(path, kind, T, field="step_ms"):
        return _cell(results, path, kind, T, field)

    lo, hi = lengths[0], lengths[-1]
    lines = []
    flat = [k for k in kinds if k != "random"]
    growth = {k: cell("tiled", k, hi, "step_mb") / cell("tiled", k, lo, "step_mb") for k in flat}
    lines.append(
        f"* **Memory.** From T = {lo} to {hi} at {TOKENS} tokens per batch, the tiled step's "
        f"memory changes by x{min(growth.values()):.2f} to x{max(growth.values()):.2f} for "
        f"every kind but Random (flat: no T x T map is kept); the full path's grows "
        + ", ".join(
            f"{k} x{cell('full', k, FULL_UP_TO, 'step_mb') / cell('full', k, lo, 'step_mb'):.1f}"
            for k in ("vanilla", "dense")
            if k in kinds
        )  # fmt: skip
        + f" by T = {FULL_UP_TO} (its maps, linear in T at fixed tokens)."
    )
    if "random" in kinds:
        p_lo, p_hi = parameter_count("random", lo) / 1e6, parameter_count("random", hi) / 1e6
        lines.append(
            f"* **Random's parameters.** R is H L^2 numbers per layer: {p_lo:.1f} M parameters "
            f"at T = {lo}, {p_hi:.0f} M at T = {hi}; its set-up memory goes from "
            f"{cell('tiled', 'random', lo, 'setup_mb'):,.0f} to "
            f"{cell('tiled', 'random', hi, 'setup_mb'):,.0f} MB and its step (the gradient of R "
            f"and AdamW's two moments, written in the step) from "
            f"{cell('tiled', 'random', lo, 'step_mb'):,.0f} to "
            f"{cell('tiled', 'random', hi, 'step_mb'):,.0f} MB. Tiles remove the maps, not "
            "this: it is the paper's design (logits that are parameters), and the reason for "
            "factorized Random (2 H L k numbers)."
        )
    if 2048 in lengths:
        ours = cell("tiled", "vanilla", 2048, "step_mb")
        theirs = cell("torch", "vanilla", 2048, "step_mb")
        lines.append(
            f"* **Vanilla at T = 2048** (B = 2): a step needs {ours:,.0f} MB above the set-up "
            f"model, PyTorch's {theirs:,.0f} MB (whole process: "
            f"{ours + cell('tiled', 'vanilla', 2048, 'setup_mb'):,.0f} MB against "
            f"{theirs + cell('torch', 'vanilla', 2048, 'setup_mb'):,.0f} MB); the full path "
            f"needed {cell('full', 'vanilla', 2048, 'step_mb'):,.0f} MB."
        )
    if 1024 in lengths:
        ratios = ", ".join(f"{k} {cell('tiled', k, 1024) / cell('torch', k, 1024):.2f}"
                           for k in kinds)  # fmt: skip
        lines.append(
            f"* **Speed at T = 1024**, step time over PyTorch's: {ratios} (one process per "
            "path and length, so read differences within about 10% as ties; "
            "`bench_train.py --configs long` interleaves the paths step by step)."
        )
    slow = {k: cell("tiled", k, hi) / cell("torch", k, hi) for k in kinds
            if cell("tiled", k, hi) and cell("torch", k, hi)}  # fmt: skip
    slow = {k: r for k, r in slow.items() if r > 1}
    if slow:
        lines.append(
            f"* **Slower than PyTorch at T = {hi}** (B = {TOKENS // hi}): "
            + ", ".join(f"{k} {r:.2f}x" for k, r in slow.items())
            + ". One batch row cannot be split into shards over the cores "
            "(`minisynth.fast.threads`): the tiles split the heads over both, but the step's "
            "other kernels run on one core, where PyTorch threads every operation."
        )
    short = [T for T in lengths if T < TILED_FROM]
    if short:
        ratios = "; ".join(
            f"T = {T}: "
            + ", ".join(
                f"{k} {cell('tiled', k, T) / cell('full', k, T):.2f}" for k in kinds
            )  # fmt: skip
            for T in short + [TILED_FROM]
        )
        at_rule = [cell("tiled", k, TILED_FROM) / cell("full", k, TILED_FROM) for k in kinds]
        beyond = [cell("tiled", k, T) / cell("full", k, T) for k in kinds for T in lengths
                  if T > TILED_FROM and cell("full", k, T)]  # fmt: skip
        lines.append(
            f"* **Where tiles start.** Tiled over full step time at short lengths: {ratios}. "
            f"`minisynth train` tiles from T = {TILED_FROM} on (`attention.TILED_FROM`; "
            "`--tiles always|never` overrides): from there tiles win on memory at every length, "
            f"and their time is x{min(at_rule):.2f} to x{max(at_rule):.2f} of the full path's "
            f"at T = {TILED_FROM}, x{min(beyond):.2f} to x{max(beyond):.2f} at the longer "
            "lengths where the full path was run."
        )
    lines.append(
        "* **Where synthetic attention saves work.** Random's tile is read from R: one "
        "product per tile forward (P v) where vanilla has two, two backward where vanilla "
        "has five (one for a frozen R), and the batch shares its logits; Dense replaces two "
        "projections (queries, keys) by one. The quadratic term remains: every kind computes "
        "B H T^2 logits per "
        "layer, so at fixed tokens the step time still grows with T (the time slopes)."
    )
    return "\n".join(lines)


def plot(results, kinds, lengths, path_png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"tiled": "-", "full": ":", "torch": "--"}
    colors = dict(zip(kinds, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for kind in kinds:
        for path in PATHS:
            Ts = [T for T in lengths if _cell(results, path, kind, T, "step_ms")]
            if not Ts:
                continue
            label = f"{kind} ({path})"
            axes[0].plot(Ts, [_cell(results, path, kind, T, "step_ms") for T in Ts],
                         styles[path], color=colors[kind], marker="o", label=label)  # fmt: skip
            axes[1].plot(Ts, [max(_cell(results, path, kind, T, "step_mb"), 1) for T in Ts],
                         styles[path], color=colors[kind], marker="o", label=label)  # fmt: skip
    for ax, title in zip(axes, ("training step, ms", "peak step memory above set-up, MB"),
                         strict=True):  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"sequence length T (B x T = {TOKENS})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle("minisynth tiled (solid), minisynth full maps (dotted), PyTorch (dashed)")
    fig.tight_layout()
    fig.savefig(path_png, dpi=110)
    plt.close(fig)


def processes_note(results):
    """Which cells were measured in several processes, and what each process gave."""
    several = {key: r for key, r in results.items() if len(r.get("step_ms_each", ())) > 1}
    if not several:
        return ""
    cells = "; ".join(
        f"{key.replace('|', ' ').replace(' ', ', ', 1)} "
        + "(" + ", ".join(f"{ms:,.0f}" for ms in r["step_ms_each"]) + " ms; "
        + ", ".join(f"{mb:,.0f}" for mb in r["step_mb_each"]) + " MB)"
        for key, r in several.items()
    )  # fmt: skip
    return (" Measured in several processes, the medians shown (each process's step time and "
            f"step memory): {cells}.")  # fmt: skip


def write_section(markdown_path, section):
    """Replace the section between the two markers in ``markdown_path`` (or append it)."""
    text = markdown_path.read_text() if markdown_path.exists() else ""
    block = f"{MARKER}\n{section.strip()}\n{MARKER}\n"
    if text.count(MARKER) == 2:
        start, end = text.index(MARKER), text.rindex(MARKER) + len(MARKER) + 1
        text = text[:start] + block + text[end:]
    else:
        text = text.rstrip() + "\n\n" + block
    markdown_path.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "length.json",
                        help="raw results (read back with --report-only)")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="tables from --json, no runs")
    parser.add_argument("--markdown", type=Path, default=None, help="write the section here")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "length.png")
    parser.add_argument("--processes", type=int, default=1,
                        help="measure each cell in this many processes (medians)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    kinds = args.kinds.split(",")
    lengths = [int(t) for t in args.lengths.split(",")]
    saved = json.loads(args.json.read_text()) if args.json.exists() else {}
    results, meta = saved.get("runs", {}), saved.get("meta", {})
    started = time.time()
    if not args.report_only:
        for T in lengths:
            for kind in kinds:
                for path in PATHS:
                    if path == "full" and T > FULL_UP_TO:
                        continue
                    r = measure(path, kind, T, args.processes)
                    results[f"{path}|{kind}|{T}"] = r
                    print(f"T={T:5d} {kind:18s} {path:6s} {r['step_ms']:9.1f} ms  "
                          f"step {r['step_mb']:8.0f} MB  set-up {r['setup_mb']:7.0f} MB",
                          flush=True)  # fmt: skip
                    # the results' minutes: a re-run of some cells adds its own
                    minutes = meta.get("minutes", 0) + (time.time() - started) / 60
                    meta = {"commit": git_state(), "cpu": cpu_model(), "minutes": minutes}
                    started = time.time()
                    args.json.write_text(json.dumps({"meta": meta, "runs": results}, indent=1))
    section = "\n\n".join(
        [
            "## Attention at length: the efficiency table (issue 29)",
            f"Command: `python benchmarks/bench_length.py --markdown BENCHMARKS.md` "
            f"({meta.get('cpu', cpu_model())}, {THREADS} threads, minisynth "
            f"{meta.get('commit', git_state())}; {meta.get('minutes', 0):.0f} min). "
            "Bench model (d_model 256, 8 heads, "
            "4 layers, "
            f"max_len = T), B x T = {TOKENS} tokens per batch, float32, one training step "
            "(forward, backward, clip, AdamW); median of "
            + ", ".join(f"{n} at T={T}" for T, n in REPEATS.items() if T in lengths)
            + " step(s) after one warm-up: the long lengths take fewer repeats."
            + processes_note(results),
            tables(results, kinds, lengths),
            "![time and memory against T](benchmarks/length.png)",
            "What it says (computed from the tables above):\n\n" + reading(results, kinds, lengths),
        ]
    )
    if args.plot:
        plot(results, kinds, lengths, args.plot)
    print(section)
    if args.markdown:
        write_section(args.markdown, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
