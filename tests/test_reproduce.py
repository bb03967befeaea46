"""benchmarks/reproduce.py: its report comes from the runs' files, and the sweep resumes.

Runs the script's ``--smoke`` sweep (tiny models, a few steps: seconds) in a
subprocess, with its run directories and report in a temporary folder.
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
SEEDS = ["0", "1"]


def sweep(tmp_path, *extra, kinds=KINDS, seeds=SEEDS):
    out = tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)]
    cmd += ["--report", str(tmp_path / "RESULTS.md"), "--kinds", *kinds, "--seeds", *seeds]
    proc = subprocess.run(
        cmd + list(extra), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    return proc, out


def table_rows(report):
    """kind -> (val mean, val sd, test mean, test sd) parsed from the report's table."""
    rows = {}
    pattern = (
        r"^\| ([a-z_+0-9]+) \| [\d,]+ \| [\d,]+ \| ([\d.]+) ± ([\d.]+) \| ([\d.]+) ± ([\d.]+) \|"
    )
    for line in report.splitlines():
        m = re.match(pattern, line)
        if m:
            rows[m.group(1)] = tuple(float(g) for g in m.groups()[1:])
    return rows


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("sweep")
    proc, out = sweep(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path, out


def test_report_numbers_are_the_runs_numbers(finished_sweep):
    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    rows = table_rows(report)
    assert sorted(rows) == sorted(KINDS)
    for kind in KINDS:
        results = [
            json.loads(p.read_text())
            for p in sorted((out / "runs").glob(f"{kind.replace('+', '_plus_')}-seed*/result.json"))
        ]
        assert [r["seed"] for r in results] == [0, 1]
        val = np.array([r["val_bpc"] for r in results])
        test = np.array([r["test_bpc"] for r in results])
        expected = (val.mean(), val.std(ddof=1), test.mean(), test.std(ddof=1))
        np.testing.assert_allclose(rows[kind], expected, atol=5e-4, err_msg=kind)
        # each result's validation BPC is the one its training run logged at the end
        for r in results:
            metrics = out / "runs" / f"{kind.replace('+', '_plus_')}-seed{r['seed']}"
            lines = (metrics / "metrics.jsonl").read_text().splitlines()
            logged = [json.loads(line)["val_bpc"] for line in lines if "val_bpc" in line]
            assert logged[-1] == pytest.approx(r["val_bpc"], abs=1e-6)
    for figure in ("bpc.png", "curves.png", "compare.png"):
        path = out / "figures" / figure
        assert path.stat().st_size > 1000, figure
        assert f"{figure})" in report
    # the map statistics are the plotting command's stats.json, averaged over heads
    stats = json.loads((out / "figures" / "stats.json").read_text())
    for model in stats["models"]:
        entropy = np.mean([h["entropy_nats"] for h in model["heads"]])
        assert f"| {model['attention']} | {entropy:.2f} |" in report
    assert "Command: `python benchmarks/reproduce.py --smoke" in report
    assert re.search(
        r"Run timings \(the runs' own wall time\): minisynth commit\(s\) \S+, numba", report
    )


def runs_of(out, name):
    paths = sorted((out / "runs").glob(f"{name.replace('+', '_plus_')}-seed*/result.json"))
    return [json.loads(p.read_text()) for p in paths]


def test_the_p_values_are_welch_tests_on_the_runs(finished_sweep):
    from scipy import stats

    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    for a, b in [
        ("dense+vanilla", "vanilla"),
        ("random_fixed", "uniform"),
        ("random_lr10", "random"),
    ]:
        cells = []
        for split in ("val", "test"):
            x = [r[f"{split}_bpc"] for r in runs_of(out, a)]
            y = [r[f"{split}_bpc"] for r in runs_of(out, b)]
            p = stats.ttest_ind(y, x, equal_var=False).pvalue
            cells += [f"{np.mean(y) - np.mean(x):+.3f}", "< 0.001" if p < 0.001 else f"{p:.3f}"]
        assert f"| {a} | {b} | " in report and " | ".join(cells) in report, (a, b)
    assert "are not independent tests" in report


def test_controls_carry_their_options_and_mixtures_their_weights(finished_sweep):
    tmp_path, out = finished_sweep
    report = (tmp_path / "RESULTS.md").read_text()
    assert {r["attention_options"]["init_std"] for r in runs_of(out, "uniform")} == {0.0}
    assert {r["synthetic_lr_scale"] for r in runs_of(out, "random_lr10")} == {10.0}
    shared = runs_of(out, "dense+vanilla_shared_q")[0]
    assert shared["params"] < runs_of(out, "dense+vanilla")[0]["params"]
    for r in runs_of(out, "dense+vanilla") + runs_of(out, "dense+vanilla_shared_q"):
        for layer, heads in enumerate(r["mixture_weights"]):
            cells = " | ".join(f"dense {d:.2f} · vanilla {v:.2f}" for d, v in heads)
            assert f"| {r['variant']} | {r['seed']} | {layer} | {cells} |" in report
            assert np.allclose(np.sum(heads, axis=1), 1.0)
    stats = json.loads((out / "figures" / "controls" / "stats.json").read_text())
    assert [m["name"] for m in stats["models"]] == [
        "uniform-seed0", "random_fixed-seed0", "random_fixed_sharp-seed0"
    ]  # fmt: skip
    uniform = stats["models"][0]
    entropy = np.mean([h["entropy_nats"] for h in uniform["heads"]])
    assert f"{entropy:.2f} for `uniform`" in report


def test_the_timing_pass_fills_todays_column(finished_sweep, tmp_path):
    src_tmp, out = finished_sweep
    shutil.copytree(out, tmp_path / "results")
    proc, _ = sweep(tmp_path, "--timings")
    assert proc.returncode == 0, proc.stderr[-2000:]
    timings = json.loads((tmp_path / "results" / "figures" / "timings.json").read_text())
    report = (tmp_path / "RESULTS.md").read_text()
    for line in report.splitlines():
        m = re.match(r"^\| ([a-z_+0-9]+) \| [\d,]+ \| .* \| ([\d,]+) \|$", line)
        if m and m.group(1) in timings["tokens_per_s"]:
            assert m.group(2) == f"{timings['tokens_per_s'][m.group(1)]:,.0f}"
    assert "Today's timings (`python benchmarks/reproduce.py --timings`" in report


def test_a_rerun_skips_finished_runs_and_resumes_from_checkpoints(finished_sweep, tmp_path):
    _, out = finished_sweep
    # copy two finished runs; make one look interrupted at its last checkpoint
    work = tmp_path / "results"
    for name in ("vanilla-seed0", "random_fixed-seed0"):
        shutil.copytree(out / "runs" / name, work / "runs" / name)
    done = json.loads((work / "runs" / "vanilla-seed0" / "result.json").read_text())
    (work / "runs" / "vanilla-seed0" / "result.json").unlink()
    before = (work / "runs" / "random_fixed-seed0" / "result.json").read_bytes()

    proc, _ = sweep(tmp_path, kinds=["vanilla", "random_fixed"], seeds=["0"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== vanilla seed 0 (resuming)" in proc.stdout
    assert "== random_fixed" not in proc.stdout  # finished: skipped, not retrained
    assert (work / "runs" / "random_fixed-seed0" / "result.json").read_bytes() == before
    again = json.loads((work / "runs" / "vanilla-seed0" / "result.json").read_text())
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
