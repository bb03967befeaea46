"""benchmarks/reproduce.py: its report comes from the runs' files, every number in it
recomputes from the run records (with scipy), and the study resumes.

Runs the script's ``--smoke`` study (tiny models, a few steps, a two-point grid per
axis: under a minute) in a subprocess, with its run directories and report in a
temporary folder.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"
KINDS = ["vanilla", "random_fixed", "dense+vanilla", "uniform", "random_fixed_sharp",
         "dense+vanilla_shared_q", "random_lr10", "random", "dense"]  # fmt: skip
PAPER = ["vanilla", "random_fixed", "dense+vanilla", "random", "dense"]
SEEDS = ["1", "2"]  # the fresh seeds


def sweep(tmp_path, *extra, kinds=KINDS, seeds=SEEDS):
    out = tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)]
    cmd += ["--report", str(tmp_path / "RESULTS.md"), "--kinds", *kinds, "--seeds", *seeds]
    proc = subprocess.run(
        cmd + list(extra), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    return proc, out


def table_rows(report, header):
    """The cells of the markdown table that follows the line starting with ``header``."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            return rows
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def results(out, name, seeds):
    runs = [out / "runs" / f"{name.replace('+', '_plus_')}-seed{s}" for s in seeds]
    return [json.loads((r / "result.json").read_text()) for r in runs]


def finals(out, name):
    """The fresh-seed runs of a chosen setting: every seed but the selection seed 0 (the
    first ones, and the extra ones a close pair earned)."""
    paths = (out / "runs").glob(f"{name.replace('+', '_plus_')}-seed*/result.json")
    runs = [json.loads(p.read_text()) for p in paths]
    return sorted((r for r in runs if r["seed"] != 0), key=lambda r: r["seed"])


def selection(out, kind):
    """name -> seed-0 validation BPC of every point of a kind's search (smoke grid)."""
    found = {}
    for path in (out / "runs").glob(f"{kind.replace('+', '_plus_')}*-seed0/result.json"):
        r = json.loads(path.read_text())
        if r["attention"] == kind and not r["attention_options"]:
            found[r["variant"]] = r
    return found


def chosen(out, kind):
    points = selection(out, kind)
    return min(points.values(), key=lambda r: r["val_bpc"])


def fmt(values):
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    proc, out = sweep(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path, out


def test_the_search_chooses_by_seed0_validation_and_the_fresh_seeds_use_it(finished_sweep):
    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    search = {row[0]: row for row in table_rows(report, "| kind | points |")}
    assert sorted(search) == sorted(PAPER)
    for kind in PAPER:
        points = selection(out, kind)
        assert len(points) == (4 if kind == "random" else 2)  # the smoke grid: 2 x (1 or 2)
        best = chosen(out, kind)
        assert f"{best['val_bpc']:.3f}" == search[kind][4]
        runs = finals(out, best["variant"])  # fresh seeds at the chosen setting
        assert [r["seed"] for r in runs][:2] == [1, 2]
        for r in runs:
            assert r["train_config"]["lr"] == best["train_config"]["lr"]
            assert r["synthetic_lr_scale"] == best["synthetic_lr_scale"]
            # each result's validation BPC is the one its training run logged at the end
            metrics = out / "runs" / f"{best['variant'].replace('+', '_plus_')}-seed{r['seed']}"
            lines = (metrics / "metrics.jsonl").read_text().splitlines()
            logged = [json.loads(line)["val_bpc"] for line in lines if "val_bpc" in line]
            assert logged[-1] == pytest.approx(r["val_bpc"], abs=1e-6)


def test_report_numbers_are_the_runs_numbers(finished_sweep):
    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    rows = {row[0]: row for row in table_rows(report, "| kind | setting | seeds |")}
    assert sorted(rows) == sorted(PAPER + ["vanilla_wide"])
    for kind in PAPER:
        runs = finals(out, chosen(out, kind)["variant"])
        assert rows[kind][2] == str(len(runs))
        assert rows[kind][3] == fmt([r["val_bpc"] for r in runs])
        assert rows[kind][4] == fmt([r["test_bpc"] for r in runs])
        assert rows[kind][5:7] == [f"{runs[0]['params']:,}", f"{runs[0]['reachable_params']:,}"]
    wide = finals(out, "vanilla_wide")
    assert wide[0]["train_config"]["lr"] == chosen(out, "vanilla")["train_config"]["lr"]
    for figure in ("bpc.png", "curves.png", "compare.png", "wall_time.png"):
        path = out / "figures" / figure
        assert path.stat().st_size > 1000, figure
        assert f"{figure})" in report
    # the map statistics are the plotting command's stats.json, averaged over heads
    stats = json.loads((out / "figures" / "stats.json").read_text())
    for model in stats["models"]:
        entropy = np.mean([h["entropy_nats"] for h in model["heads"]])
        assert f"| {model['name']} | {entropy:.2f} |" in report
    assert "Command: `python benchmarks/reproduce.py --smoke" in report
    assert re.search(r"Runs made at minisynth commit\(s\) \S+, numba backend", report)


def holm(p):
    """Holm's adjusted p-values by their definition (max over earlier ranks of (m - r) p)."""
    order = np.argsort(p)
    adjusted = np.empty(len(p))
    for position, i in enumerate(order):
        adjusted[i] = min(1, max((len(p) - r) * p[order[r]] for r in range(position + 1)))
    return adjusted


def test_every_comparison_recomputes_from_the_runs_with_scipy(finished_sweep):
    from scipy import stats

    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    rows = table_rows(report, "| first | second | test gap |")
    assert len(rows) >= 10
    names = {kind: chosen(out, kind)["variant"] for kind in PAPER}
    names["vanilla_wide"] = "vanilla_wide"
    pvalues = []
    for row in rows:
        a, b = row[0], row[1]
        if {a, b} & {"uniform", "random_fixed_sharp", "dense+vanilla_shared_q"}:
            x, y = (results(out, n, ["0", "1"]) for n in (a, b))  # controls: untuned runs
        else:
            x, y = (finals(out, names[n]) for n in (a, b))
        xt, yt = [r["test_bpc"] for r in x], [r["test_bpc"] for r in y]
        welch = stats.ttest_ind(yt, xt, equal_var=False)
        ci = welch.confidence_interval(0.95)
        assert row[2] == f"{np.mean(yt) - np.mean(xt):+.3f}", row
        assert row[3] == f"[{ci.low:+.3f}, {ci.high:+.3f}]", row
        assert row[4] == ("< 0.001" if welch.pvalue < 0.001 else f"{welch.pvalue:.3f}"), row
        xv, yv = [r["val_bpc"] for r in x], [r["val_bpc"] for r in y]
        assert row[8] == f"{np.mean(yv) - np.mean(xv):+.3f}", row
        pvalues.append(welch.pvalue)
    for row, h in zip(rows, holm(np.array(pvalues)), strict=True):
        assert row[5] == ("< 0.001" if h < 0.001 else f"{h:.3f}")
        assert row[7] == ("yes" if h < 0.05 else "no")
    pairs = {(row[0], row[1]) for row in rows}  # the paper's pairs, the better one first
    assert ("dense+vanilla", "vanilla") in pairs and ("random", "dense") in pairs
    assert f"over all {len(rows)} comparisons" in report


def test_controls_carry_their_options_and_mixtures_their_weights(finished_sweep):
    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    assert {r["attention_options"]["init_std"] for r in results(out, "uniform", [0, 1])} == {0.0}
    assert {r["synthetic_lr_scale"] for r in results(out, "random_lr10", [0, 1])} == {10.0}
    shared = results(out, "dense+vanilla_shared_q", [0])[0]
    assert shared["params"] < results(out, "dense+vanilla", [0])[0]["params"]
    mix = finals(out, chosen(out, "dense+vanilla")["variant"])
    w = np.array([r["mixture_weights"] for r in mix])  # (seeds, layers, H, 2)
    assert np.allclose(w.sum(axis=-1), 1.0)
    cells = " | ".join(
        f"dense {w[:, 0, h, 0].mean():.2f} ± {w[:, 0, h, 0].std(ddof=1):.2f} · "
        f"vanilla {w[:, 0, h, 1].mean():.2f} ± {w[:, 0, h, 1].std(ddof=1):.2f}"
        for h in range(w.shape[2])
    )
    assert f"| dense+vanilla | 0 | {cells} |" in report
    stats = json.loads((out / "figures" / "controls" / "stats.json").read_text())
    assert [m["name"] for m in stats["models"]] == [
        "uniform-seed0", "random_fixed-seed0", "random_fixed_sharp-seed0"
    ]  # fmt: skip


def test_the_wall_time_view_sums_the_logged_intervals(finished_sweep):
    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    rows = {row[0]: row for row in table_rows(report, "| kind | training seconds")}
    for kind in PAPER:
        seconds = []
        for r in finals(out, chosen(out, kind)["variant"])[:2]:  # the first fresh seeds
            folder = out / "runs" / f"{r['variant'].replace('+', '_plus_')}-seed{r['seed']}"
            records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            steps = np.diff([0] + [x["step"] for x in records])
            tokens = steps * 4 * 16  # smoke batch 4 x 16 bytes
            seconds.append(sum(t / x["tokens_per_s"] for t, x in zip(tokens, records, strict=True)))
        assert rows[kind][1] == f"{np.mean(seconds):.1f}"


def test_a_rerun_skips_finished_runs_and_resumes_from_checkpoints(finished_sweep, tmp_path):
    _, out = finished_sweep
    # copy the finished study; make one fresh-seed run look interrupted at its last checkpoint
    work = tmp_path / "results"
    shutil.copytree(out, work)
    name = chosen(out, "vanilla")["variant"]
    folder = work / "runs" / f"{name}-seed1"
    done = json.loads((folder / "result.json").read_text())
    (folder / "result.json").unlink()
    others = {p: p.read_bytes() for p in work.glob("runs/*/result.json")}

    proc, _ = sweep(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    started = [line for line in proc.stdout.splitlines() if line.startswith("== ")]
    assert started == [f"== {name} seed 1 (resuming)"]  # the rest finished: skipped
    assert all(p.read_bytes() == before for p, before in others.items())
    again = json.loads((folder / "result.json").read_text())
    # the checkpoint was at the last step: the resumed run evaluates the same model
    assert again["val_bpc"] == done["val_bpc"]
    assert again["test_bpc"] == done["test_bpc"]


def test_report_only_without_runs_says_so(tmp_path):
    proc, _ = sweep(tmp_path, "--report-only")
    assert proc.returncode != 0
    assert "no finished runs" in proc.stderr


def test_a_clean_clone_regenerates_the_same_report(finished_sweep, tmp_path):
    # what is committed: result.json, metrics.jsonl, figures; not the checkpoints
    src_tmp, out = finished_sweep
    clone = tmp_path / "results"
    shutil.copytree(out, clone, ignore=shutil.ignore_patterns("*.npz"))
    proc, _ = sweep(tmp_path, "--report-only")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(clone.glob("runs/*/checkpoint.npz"))  # nothing was retrained

    def body(path):  # all but the two lines that name the output paths
        lines = path.read_text().splitlines()
        return [line for line in lines if not line.startswith(("Command", "Generated"))]

    assert body(tmp_path / "RESULTS.md") == body(src_tmp / "RESULTS.md")
