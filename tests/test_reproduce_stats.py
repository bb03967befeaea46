"""The reproduction's statistics and search rule (benchmarks/reproduce_stats.py,
reproduce_setup.py), each against an independent computation: scipy's own interval,
Holm's definition written out, a Monte Carlo power estimate, the causal mask's count."""

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reproduce_setup as setup  # noqa: E402
import reproduce_stats  # noqa: E402


def test_welch_interval_and_p_are_scipys():
    rng = np.random.default_rng(0)
    x, y = rng.normal(2.7, 0.01, 5), rng.normal(2.72, 0.02, 6)
    gap, low, high, p = reproduce_stats.welch(x, y)
    test = stats.ttest_ind(y, x, equal_var=False)
    ci = test.confidence_interval(0.95)
    assert gap == pytest.approx(y.mean() - x.mean())
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert p == pytest.approx(test.pvalue, rel=1e-12)


def holm_by_definition(p):
    """Holm's adjusted p_i: max over the hypotheses ranked no later than i of (m - rank) p."""
    m = len(p)
    ranked = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for position, i in enumerate(ranked):
        out[i] = min(1.0, max((m - r) * p[ranked[r]] for r in range(position + 1)))
    return out


def test_holm_matches_its_definition_and_rejects_as_the_step_down_procedure():
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 17):
        p = rng.uniform(0, 0.2, m) ** 2
        adjusted = reproduce_stats.holm(p)
        np.testing.assert_allclose(adjusted, holm_by_definition(list(p)), rtol=1e-12)
        # the step-down test: reject the k smallest while p_(k) <= alpha / (m - k + 1)
        order = np.argsort(p)
        rejected = set()
        for k, i in enumerate(order):
            if p[i] > 0.05 / (m - k):
                break
            rejected.add(i)
        assert {i for i in range(m) if adjusted[i] <= 0.05} == rejected


@pytest.mark.parametrize("n", [3, 5, 8])
def test_the_detectable_gap_has_80_percent_power(n):
    gap = reproduce_stats.detectable_gap(0.01, n, n)
    rng = np.random.default_rng(n)
    draws = 40_000
    x = rng.normal(0.0, 0.01, (draws, n))
    y = rng.normal(gap, 0.01, (draws, n))
    power = np.mean(stats.ttest_ind(y, x, axis=1).pvalue < 0.05)
    assert power == pytest.approx(0.8, abs=0.01)
    # the same at a stricter level needs a larger gap
    assert reproduce_stats.detectable_gap(0.01, n, n, alpha=0.05 / 20) > gap


def test_the_pooled_check_is_anova_and_tukey():
    rng = np.random.default_rng(2)
    groups = {k: rng.normal(mu, 0.01, 5) for k, mu in (("a", 2.70), ("b", 2.70), ("c", 2.75))}
    result = reproduce_stats.pooled(groups)
    assert result.p == pytest.approx(stats.f_oneway(*groups.values()).pvalue)
    assert result.tukey_p[0, 2] < 0.05 < result.tukey_p[0, 1]
    diff = groups["a"].mean() - groups["c"].mean()
    assert (result.tukey_low[0, 2] + result.tukey_high[0, 2]) / 2 == pytest.approx(diff)


def bowl(best_lr, best_scale):
    """Validation BPC of a convex bowl in (log lr, log scale) with its minimum at a point."""

    def bpc(kind, lr, scale):
        return 2.7 + math.log(lr / best_lr) ** 2 + math.log(scale / best_scale) ** 2

    return bpc


@pytest.mark.parametrize(
    "kind, best", [("random", (1.2e-2, 100.0)), ("random", (1.5e-3, 1.0)), ("dense", (7.5e-4, 1.0))]
)
def test_the_search_walks_to_a_minimum_of_its_whole_neighbourhood(kind, best):
    bpc, known = bowl(*best), {}
    while True:  # run every point the search asks for, as the study does
        points, chosen = setup.kind_search(kind, known)
        missing = [p for p in points if setup.tuning_name(kind, *p) not in known]
        if not missing:
            break
        for p in missing:
            known[setup.tuning_name(kind, *p)] = bpc(kind, *p)
    assert chosen == best
    lrs = setup._neighbours(best[0], setup.LR_LADDER)
    scales = setup._neighbours(best[1], setup.R_SCALE_LADDER) if kind != "dense" else (1.0,)
    assert set(itertools.product(lrs, scales)) <= set(points)  # its neighbours were run
    base = set(itertools.product(setup.LR_GRID, scales if kind == "dense" else setup.R_SCALE_GRID))
    assert base <= set(points)


def test_the_search_waits_for_its_grid_and_keeps_the_old_runs_names():
    points, chosen = setup.kind_search("random", {"random": 3.0})
    assert chosen is None and len(points) == len(setup.LR_GRID) * len(setup.R_SCALE_GRID)
    assert setup.tuning_name("random", 3e-3, 1.0) == "random"
    assert setup.tuning_name("random", 3e-3, 10.0) == "random_lr10"
    assert setup.tuning_name("dense+vanilla", 1.2e-2, 1.0) == "dense+vanilla@lr0.012"


@pytest.mark.parametrize("kind", ["vanilla", "dense", "random", "factorized_random",
                                  "random+vanilla", "random_fixed"])  # fmt: skip
def test_reachable_parameters_are_the_causal_masks_count(kind):
    config = setup.model_config(setup.Variant(kind, kind))
    from minisynth import SynthesizerLM

    raw = SynthesizerLM(config, seed=0).num_params()
    H, L, layers = config.n_heads, config.max_len, config.n_layers
    # R: the L (L - 1) / 2 entries above the diagonal, and R[h, 0, 0] (row 0's softmax
    # over one logit); factorized R1[h, 0, :] feeds only row 0
    never = {"random": H * (L * (L - 1) // 2 + 1), "random+vanilla": H * (L * (L - 1) // 2 + 1),
             "factorized_random": H * 8}.get(kind, 0)  # fmt: skip
    assert setup.reachable_params(config) == raw - layers * never


def test_the_widened_vanilla_is_the_nearest_width():
    vanilla = setup.Variant("vanilla", "vanilla", lr=3e-3)
    wide = setup.widened_vanilla(vanilla, 512_784)
    d = dict(wide.model)["d_model"]
    from minisynth import SynthesizerLM

    def size(width):
        config = setup.model_config(setup.Variant("v", "vanilla", model=(("d_model", width),)))
        return SynthesizerLM(config, seed=0).num_params()

    assert d % setup.MODEL["n_heads"] == 0 and wide.lr == 3e-3 and wide.name == setup.WIDE_VANILLA
    assert abs(size(d) - 512_784) <= min(abs(size(d - 4) - 512_784), abs(size(d + 4) - 512_784))


def test_more_seeds_go_to_the_pairs_whose_gap_is_near_what_the_seeds_detect():
    import reproduce_report

    spread = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])  # sd 0.0158: 5 seeds detect ~0.032

    def runs(mean):
        return [{"test_bpc": mean + d, "val_bpc": mean + d} for d in spread]

    detectable = reproduce_stats.detectable_gap(np.std(spread, ddof=1), 5, 5)
    final = {
        "vanilla": runs(2.90),
        "dense+vanilla": runs(2.90 - detectable),  # exactly the detectable gap: close
        "random": runs(2.90 + 10 * detectable),  # far beyond it: decided already
        "dense": runs(2.90 + 10 * detectable + 0.1 * detectable),  # far below: hopeless
    }
    assert reproduce_report.kinds_needing_more_seeds(final) == {"vanilla", "dense+vanilla"}
