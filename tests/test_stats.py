"""Seed-variance statistics against independent oracles: scipy, statsmodels and hand counts.

Every table here is small and made by hand, so each expected value can be checked with a pencil
or with the library that xorbench wraps (to the last digit where the computation is the same).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.nonparametric import rank_compare_2indep
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from xorbench import model, results, stats, stats_plots
from xorbench.data import make_xor

matplotlib.use("agg")

N_BOOT = 300  # enough for the tests' purposes, and fast


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------
# Hand-made runs tables


def cell_runs(
    framework: str = "lightning",
    optimizer: str = "sgd",
    batch_size: int = 32,
    *,
    acc: Sequence[float],
    ett: Sequence[int | None] | None = None,
    loss: Sequence[float] | None = None,
    status: Sequence[str] | None = None,
    epochs: int = 20,
    seeds: Sequence[int] | None = None,
) -> pd.DataFrame:
    """One cell's runs: seed i has final accuracy acc[i], epochs to target ett[i], loss[i]."""
    n = len(acc)
    seeds = list(seeds) if seeds is not None else list(range(n))
    ett = list(ett) if ett is not None else [5 if a >= 0.9 else None for a in acc]
    loss = list(loss) if loss is not None else [0.1 if a >= 0.9 else 0.6 for a in acc]
    status = list(status) if status is not None else ["ok"] * n
    frame = pd.DataFrame({
        "run_id": [f"{framework}-{optimizer}-b{batch_size}-s{s}" for s in seeds],
        "cell": f"{framework}-{optimizer}-b{batch_size}",
        "framework": framework, "optimizer": optimizer, "batch_size": batch_size,
        "lr": 0.05, "hidden": "3x4", "epochs": epochs,
        "seed": seeds, "init_seed": [1000 + s for s in seeds],
        "order_seed": [2000 + s for s in seeds], "data_seed": 7,
        "status": status, "error": "",
        "final_train_loss": loss, "final_val_loss": loss, "final_val_acc": acc,
        "best_val_acc": acc, "target": 0.9, "epochs_to_target": ett,
        "epochs_trained": epochs, "steps": 100, "asgd_averaging": None, "wall_s": 0.1,
    })
    frame["epochs_to_target"] = frame["epochs_to_target"].astype("Int64")
    return frame


def table(*cells: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(cells, ignore_index=True)


def f2_runs() -> pd.DataFrame:
    """Field case F2: 10 seeds, 7 end at accuracy 1.0, 2 at 0.75, 1 at 0.5."""
    acc = [1.0, 1.0, 0.75, 1.0, 1.0, 0.5, 1.0, 0.75, 1.0, 1.0]
    ett = [4, 6, None, 5, 9, None, 3, None, 12, 7]
    return cell_runs(acc=acc, ett=ett)


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    """Turn every warning into an error inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ---------------------------------------------------------------------------------------------
# Primitive statistics against their oracles


def test_wilson_interval_matches_statsmodels_and_a_hand_computation() -> None:
    low, high = stats.wilson_interval(7, 10)

    # statsmodels, to the digit.
    sm_low, sm_high = proportion_confint(7, 10, alpha=0.05, method="wilson")
    assert (float(low), float(high)) == (sm_low, sm_high)
    # By hand: centre (p + z²/2n) / (1 + z²/n),
    # half-width z sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
    z, n, p = sps.norm.ppf(0.975), 10, 0.7
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    np.testing.assert_allclose([low, high], [centre - half, centre + half], rtol=1e-12)
    np.testing.assert_allclose([low, high], [0.396778147461145, 0.892208732593699], atol=1e-12)


def test_wilson_interval_at_the_edges() -> None:
    low, high = stats.wilson_interval([0, 10, 0], [10, 10, 0])

    assert low[0] == 0 and 0 < high[0] < 0.35
    assert high[1] == pytest.approx(1.0) and 0.65 < low[1] < 1
    assert math.isnan(low[2]) and math.isnan(high[2])  # no seeds, no interval


def test_iqm_is_scipy_trim_mean_and_the_mean_of_the_middle_half() -> None:
    x = [1.0, 2, 3, 4, 5, 6, 7, 100]

    assert stats.iqm(x) == sps.trim_mean(x, 0.25)
    assert stats.iqm(x) == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert math.isnan(stats.iqm([]))


def test_bootstrap_interval_is_scipys_percentile_interval() -> None:
    x = np.random.default_rng(3).normal(size=25)

    mine = stats.bootstrap_interval((x,), np.mean, n_boot=N_BOOT, random_state=5)
    theirs = sps.bootstrap((x,), np.mean, n_resamples=N_BOOT, method="percentile",
                           rng=np.random.default_rng(5)).confidence_interval
    np.testing.assert_allclose(mine, (theirs.low, theirs.high), rtol=1e-12)
    assert mine == stats.bootstrap_interval((x,), np.mean, n_boot=N_BOOT, random_state=5)


def test_bootstrap_on_a_constant_sample_is_a_zero_width_interval_without_warnings() -> None:
    with no_warnings():
        low, high = stats.bootstrap_interval((np.full(30, 0.75),), np.mean, n_boot=N_BOOT)
        pair = stats.bootstrap_interval((np.ones(30), np.ones(30)), stats.prob_lower,
                                        paired=True, n_boot=N_BOOT)

    assert low == pytest.approx(0.75) and high == pytest.approx(0.75)
    assert pair == (0.5, 0.5)
    assert all(math.isnan(v) for v in stats.bootstrap_interval((np.ones(1),), np.mean))


def test_prob_lower_is_a_brute_force_pair_count() -> None:
    a = np.array([0.1, 0.2, 0.2, 0.5, np.inf])
    b = np.array([0.2, 0.3, 0.05, np.inf])

    wins = sum(1.0 if x < y else 0.5 if x == y else 0.0 for x in a for y in b)
    assert stats.prob_lower(a, b) == pytest.approx(wins / (len(a) * len(b)), abs=1e-15)
    finite_a, finite_b = a[np.isfinite(a)], b[np.isfinite(b)]
    assert stats.prob_lower(finite_a, finite_b) == pytest.approx(
        rank_compare_2indep(finite_b, finite_a).prob1, abs=1e-15)
    # Vectorised over bootstrap resamples: one value per row.
    rows = stats.prob_lower(np.vstack([a, a[::-1]]), np.vstack([b, b]))
    np.testing.assert_allclose(rows, [wins / 20] * 2)


def test_brunner_munzel_is_scipys_and_statsmodels() -> None:
    a = np.array([0.31, 0.12, 0.45, 0.22, 0.5, 0.18, 0.33])
    b = np.array([0.41, 0.52, 0.3, 0.61, 0.48, 0.39])

    assert stats.brunner_munzel_pvalue(a, b) == sps.brunnermunzel(a, b).pvalue
    assert stats.brunner_munzel_pvalue(a, b) == pytest.approx(
        rank_compare_2indep(a, b).pvalue, rel=1e-12)


def test_brunner_munzel_without_variance_is_handled_explicitly() -> None:
    with no_warnings():
        apart = stats.brunner_munzel_pvalue([1.0, 2, 3], [4.0, 5, 6, 7])
        tied = stats.brunner_munzel_pvalue([1.0] * 30, [1.0] * 30)

    assert apart == pytest.approx(2 / math.comb(7, 3))  # exact permutation p of a full split
    assert tied == 1.0


@pytest.mark.parametrize(("shift", "n", "equivalent"),
                         [(0.0, 300, True), (0.05, 300, True), (0.0, 40, False), (1.0, 40, False)])
def test_bootstrap_tost_agrees_with_scipys_90_percent_interval(
    shift: float, n: int, equivalent: bool
) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=n), rng.normal(shift, size=n)
    replicates = stats.bootstrap_distribution((a, b), stats.prob_lower, paired=True,
                                              n_boot=N_BOOT, random_state=1)
    ci = sps.bootstrap((a, b), stats.prob_lower, n_resamples=N_BOOT, paired=True,
                       method="percentile", confidence_level=0.9,
                       rng=np.random.default_rng(1)).confidence_interval

    p = stats.bootstrap_tost_pvalue(replicates, 0.4, 0.6)
    assert (p < 0.05) == (ci.low > 0.4 and ci.high < 0.6) == equivalent
    assert stats.bootstrap_tost_pvalue(np.full(10, 0.5), 0.4, 0.6) == 0.0
    assert stats.bootstrap_tost_pvalue(np.ones(10), 0.4, 0.6) == 1.0


def test_mcnemar_matches_statsmodels_on_a_known_table() -> None:
    # 2x2 [[both, a only], [b only, neither]] = [[10, 7], [1, 12]].
    a = np.array([1] * 10 + [1] * 7 + [0] * 1 + [0] * 12, dtype=bool)
    b = np.array([1] * 10 + [0] * 7 + [1] * 1 + [0] * 12, dtype=bool)

    p = stats.mcnemar_pvalue(a, b)
    assert p == mcnemar([[10, 7], [1, 12]], exact=True).pvalue
    assert p == pytest.approx(2 * (1 + 8) / 2**8)  # exact binomial on the 8 discordant pairs
    assert stats.mcnemar_pvalue(a, a) == 1.0


def test_holm_matches_statsmodels_to_the_digit() -> None:
    rng = np.random.default_rng(0)
    cases = [
        np.array([0.01, 0.04, 0.03, 0.005]),
        np.array([0.2, 0.2, 0.01, 0.9, 0.6, 0.04]),  # ties and values that clip at 1
        rng.uniform(0, 0.1, size=17),
        np.array([0.5]),
    ]
    for p in cases:
        np.testing.assert_array_equal(stats.holm(p), multipletests(p, method="holm")[1])
    # By hand: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.04, 0.06).
    np.testing.assert_allclose(stats.holm(cases[0]), [0.03, 0.06, 0.06, 0.02])


def test_holm_leaves_nan_out_of_the_family() -> None:
    adjusted = stats.holm([0.01, np.nan, 0.04])

    np.testing.assert_allclose(adjusted[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert math.isnan(adjusted[1])


def test_tost_is_statsmodels_ttost_and_a_hand_computation() -> None:
    a = np.array([0.52, 0.48, 0.61, 0.55, 0.47, 0.5, 0.58, 0.49])
    b = np.array([0.5, 0.5, 0.57, 0.56, 0.45, 0.49, 0.55, 0.5])

    paired = stats.tost_pvalue(a, b, 0.05, paired=True)
    assert paired == ttost_paired(a, b, -0.05, 0.05)[0]
    d = a - b
    se = d.std(ddof=1) / math.sqrt(len(d))
    by_hand = max(sps.t.sf((d.mean() + 0.05) / se, len(d) - 1),
                  sps.t.cdf((d.mean() - 0.05) / se, len(d) - 1))
    assert paired == pytest.approx(by_hand, rel=1e-10)
    unpaired = stats.tost_pvalue(a, b, 0.05, paired=False)
    assert unpaired == ttost_ind(a, b, -0.05, 0.05, usevar="unequal")[0]


def test_tost_without_spread_uses_an_exact_bound_for_rates_and_the_t_limit_otherwise() -> None:
    with no_warnings():
        rates_40 = stats.tost_pvalue(np.ones(40), np.ones(40), 0.05, paired=True, span=1)
        rates_80 = stats.tost_pvalue(np.ones(80), np.ones(80), 0.05, paired=True, span=1)
        apart = stats.tost_pvalue(np.ones(40), np.zeros(40), 0.05, paired=True, span=1)
        # Epochs to target: every seed at the budget of 500 in both cells, margin 25 epochs.
        never = stats.tost_pvalue(np.full(40, 500.0), np.full(40, 500.0), 25, paired=True,
                                  span=500)
        unpaired = stats.tost_pvalue(np.ones(40), np.ones(30), 0.05, paired=False, span=1)
        same = stats.tost_pvalue(np.full(40, 0.3), np.full(40, 0.3), 0.02, paired=True)
        shifted = stats.tost_pvalue(np.full(40, 0.3), np.full(40, 0.2), 0.02, paired=True)

    # No discordant seed of 40: P(0 discordant | rate 0.05) = 0.95^40, too large to conclude.
    assert rates_40 == pytest.approx(0.95**40)
    assert rates_40 == sps.binomtest(0, 40, 0.05, alternative="less").pvalue
    assert rates_80 == pytest.approx(0.95**80) and rates_80 < 0.05
    assert apart == 1.0
    assert never == pytest.approx(0.95**40)
    assert unpaired == pytest.approx(0.95**30)  # the smaller cell bounds its own miss rate
    assert (same, shifted) == (0.0, 1.0)


def test_mean_difference_pvalue_is_scipys_t_test() -> None:
    a = np.array([12.0, 15, 9, 20, 14, 11])
    b = np.array([10.0, 14, 9, 15, 12, 12])

    assert stats.mean_difference_pvalue(a, b, paired=True) == sps.ttest_rel(a, b).pvalue
    assert stats.mean_difference_pvalue(a, b, paired=False) == sps.ttest_ind(
        a, b, equal_var=False).pvalue
    with no_warnings():
        assert stats.mean_difference_pvalue(np.ones(5), np.ones(5), paired=True) == 1.0
        assert stats.mean_difference_pvalue(np.ones(5), np.zeros(5), paired=False) == 0.0


# ---------------------------------------------------------------------------------------------
# Power


def test_seeds_for_rates_is_the_normal_approximation_on_cohens_h() -> None:
    h = 2 * math.asin(math.sqrt(0.9)) - 2 * math.asin(math.sqrt(0.6))
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)

    # The far tail that statsmodels also counts is negligible at this effect size.
    assert stats.seeds_for_rates(0.9, 0.6) == math.ceil(2 * (z / h) ** 2)
    assert stats.seeds_for_rates(0.6, 0.9) == stats.seeds_for_rates(0.9, 0.6)
    assert stats.seeds_for_rates(0.7, 0.7) == math.inf


def test_seeds_for_mean_difference_reaches_80_percent_power_and_no_fewer_do() -> None:
    a = np.array([30.0, 42, 35, 28, 50, 33, 41, 37])
    b = np.array([28.0, 35, 36, 20, 44, 30, 35, 36])
    d = (a - b).mean() / (a - b).std(ddof=1)

    n = stats.seeds_for_mean_difference(a, b, paired=True)
    power = TTestPower()
    assert power.power(d, n, 0.05) >= 0.8 > power.power(d, n - 1, 0.05)


def test_seeds_for_correlation_matches_cohens_table() -> None:
    # Cohen (1988), table 3.4.1: r = 0.30, two-sided alpha 0.05, power 0.80 -> n = 85.
    assert stats.seeds_for_correlation(0.3) == 85
    assert stats.seeds_for_correlation(0.0) == math.inf


def test_power_seeds_needed_dispatches_by_outcome_and_names_the_choices() -> None:
    a, b = np.array([1.0, 1, 1, 0, 1, 1]), np.array([0.0, 1, 0, 0, 1, 0])

    assert stats.power_seeds_needed("rate", a, b) == stats.seeds_for_rates(5 / 6, 2 / 6)
    assert stats.power_seeds_needed("mean", a, b, paired=False) == (
        stats.seeds_for_mean_difference(a, b, paired=False))
    with pytest.raises(ValueError, match="outcome must be one of rate, prob_lower, mean; "
                                         "received 'median'"):
        stats.power_seeds_needed("median", a, b)


def test_seeds_for_prob_lower_shrinks_as_the_effect_grows() -> None:
    base = np.linspace(0.0, 1.0, 30)
    small = stats.seeds_for_prob_lower(base, base + 0.1)
    large = stats.seeds_for_prob_lower(base, base + 0.5)

    assert math.isfinite(small) and math.isfinite(large) and large < small
    assert stats.seeds_for_prob_lower(base, base) == math.inf


# ---------------------------------------------------------------------------------------------
# Summary per cell


def test_field_case_f2_seven_of_ten_reached_with_stuck_runs_counted() -> None:
    summary = stats.cell_summary(f2_runs(), n_boot=N_BOOT)

    row = summary.iloc[0]
    assert (row["seeds"], row["reached"], row["reached_rate"]) == (10, 7, 0.7)
    assert (row["reached_low"], row["reached_high"]) == proportion_confint(7, 10, method="wilson")
    assert (row["stuck_near_0_75"], row["stuck_near_0_5"]) == (2, 1)
    assert (row["other_not_reached"], row["diverged"], row["failed"]) == (0, 0, 0)
    assert pd.isna(row["dead_first_layer"])
    acc = np.array(f2_runs()["final_val_acc"])
    assert row["val_acc_n"] == 10  # every seed, not only those that reached
    assert row["val_acc_median"] == 1.0
    assert row["val_acc_q1"] == np.percentile(acc, 25) == pytest.approx(0.8125)
    assert row["val_acc_iqm"] == sps.trim_mean(acc, 0.25)
    assert row["val_acc_mean"] == pytest.approx(0.9)  # (7 * 1.0 + 2 * 0.75 + 0.5) / 10
    assert row["val_acc_mean_low"] < 0.9 < row["val_acc_mean_high"]


def test_field_case_f2_comparisons_are_withheld_and_the_report_says_so() -> None:
    runs = table(f2_runs(), cell_runs(optimizer="adam", acc=[1.0] * 10))

    comparison = stats.compare_optimizers(runs, n_boot=N_BOOT)
    assert comparison.empty
    assert "Below 30 seeds per cell" in comparison.withheld
    assert "fewest seeds in a compared cell here: 10" in comparison.withheld
    text = stats_plots.stats_markdown(stats.compute_tables(runs, n_boot=N_BOOT))
    assert "7/10 = 0.70 [0.40, 0.89]" in text
    assert "2 / 1" not in text.split("7/10")[0]  # the counts come after their cell
    assert "Below 30 seeds per cell this report shows descriptive statistics only" in text
    assert comparison.too_few_seeds
    assert "Not shown: fewer than 30 seeds per cell (see above)." in text
    assert "| lightning   | sgd         | 32      |" in text


def test_restricted_mean_and_median_epochs_by_hand() -> None:
    runs = cell_runs(acc=[1.0, 1.0, 0.5, 0.75], ett=[3, 10, None, None], epochs=20)

    row = stats.cell_summary(runs, n_boot=N_BOOT).iloc[0]
    assert row["epochs_restricted_mean"] == (3 + 10 + 20 + 20) / 4
    assert row["epochs_median"] == 10  # by epoch 10, 2 of 4 seeds had reached
    one = cell_runs(acc=[1.0, 0.5, 0.5, 0.5], ett=[3, None, None, None], epochs=20)
    assert stats.cell_summary(one, n_boot=N_BOOT).iloc[0]["epochs_median"] == math.inf


def test_reached_by_epoch_counts_the_never_reached_in_every_denominator() -> None:
    runs = cell_runs(acc=[1.0, 1.0, 0.5, 0.75], ett=[3, 10, None, None], epochs=20)

    curve = stats.reached_by_epoch(runs).set_index("epoch")
    assert list(curve.index) == list(range(21))
    assert curve.loc[2, "fraction"] == 0 and curve.loc[3, "fraction"] == 0.25
    assert curve.loc[10, "fraction"] == 0.5 and curve.loc[20, "fraction"] == 0.5
    low, high = proportion_confint(2, 4, method="wilson")
    assert (curve.loc[15, "low"], curve.loc[15, "high"]) == (low, high)


def test_failure_kinds_follow_status_then_final_accuracy() -> None:
    runs = cell_runs(
        acc=[1.0, 0.5, 0.74, 0.62, np.nan, 0.5, 0.95],
        ett=[5, None, None, None, None, None, 4],
        loss=[0.1, 0.7, 0.5, 0.6, np.nan, np.inf, 0.1],
        status=["ok", "ok", "ok", "ok", "failed", "diverged", "diverged"],
    )

    kinds = stats.failure_kinds(runs).tolist()
    assert kinds == ["", "stuck_near_0_5", "stuck_near_0_75", "other_not_reached", "failed",
                     "diverged", "diverged"]
    row = stats.cell_summary(runs, n_boot=N_BOOT).iloc[0]
    assert (row["reached"], row["diverged"], row["failed"]) == (2, 2, 1)
    assert row["val_loss_n"] == 5  # the failed run's NaN and the diverged run's inf left out


def test_dead_first_layer_is_counted_from_hand_made_weights() -> None:
    # Field case F1: every first-layer weight <= 0 and bias -1 -> no unit active on [0, 1]^2.
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    dead = model.glorot_uniform((3, 4), init_seed=1)
    dead[0] = (-np.abs(dead[0][0]), np.full(3, -1.0, dtype=np.float32))
    alive = [(k.copy(), b.copy()) for k, b in dead]
    alive[0][0][0, 1] = 2.0  # unit 1 now fires on (1, 0) and (1, 1)
    runs = cell_runs(acc=[0.5, 1.0], ett=[None, 3])
    weights = pd.DataFrame({
        "run_id": runs["run_id"], "hidden": "3x4",
        "params": [model.flatten(dead), model.flatten(alive)],
    })

    flags = stats.dead_first_layer(weights, x)
    assert flags.tolist() == [True, False]
    assert stats.cell_summary(runs, weights, x, n_boot=N_BOOT).iloc[0]["dead_first_layer"] == 1
    by_seed = stats.dead_first_layer(weights, {7: x}, runs)  # inputs looked up by data seed
    assert by_seed.tolist() == [True, False]


def test_a_diverged_first_layer_is_neither_dead_nor_alive() -> None:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    diverged = model.glorot_uniform((3, 4), init_seed=1)
    diverged[0][0][0, 0] = np.nan
    huge = model.glorot_uniform((3, 4), init_seed=1)
    huge[0] = (np.full((2, 3), 3e38, dtype=np.float32), np.full(3, -3e38, dtype=np.float32))
    runs = cell_runs(acc=[0.5, 0.5], ett=[None, None])
    weights = pd.DataFrame({
        "run_id": runs["run_id"], "hidden": "3x4",
        "params": [model.flatten(diverged), model.flatten(huge)],
    })

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        flags = stats.dead_first_layer(weights, x)

    # NaN weights say nothing; finite float32 weights that overflow in float32 still count:
    # 3e38 + 3e38 - 3e38 > 0 on (1, 1), so the layer is alive.
    assert flags.isna().tolist() == [True, False]
    assert flags.iloc[1] == False  # noqa: E712 (a nullable boolean, not a Python bool)
    assert stats.cell_summary(runs, weights, x, n_boot=N_BOOT).iloc[0]["dead_first_layer"] == 0


def test_a_table_where_every_seed_has_the_same_value_gives_finite_intervals_and_no_warnings(
) -> None:
    same = {"acc": [1.0] * 40, "ett": [7] * 40, "loss": [0.05] * 40}
    runs = table(*[cell_runs(fw, opt, batch, **same) for fw in ("lightning", "keras")
                   for opt in ("sgd", "adam") for batch in (32, 150)])

    with no_warnings():
        tables = stats.compute_tables(runs, n_boot=N_BOOT)
        text = stats_plots.stats_markdown(tables)
    interval_columns = [c for c in tables.summary if c.endswith(("_low", "_high"))]
    values = tables.summary[interval_columns].to_numpy(dtype=float)
    assert np.isfinite(values).all()
    assert tables.summary["val_acc_mean_low"].eq(1.0).all()
    assert tables.summary["val_loss_mean_high"].to_numpy() == pytest.approx(0.05)
    opt = tables.optimizers.table.set_index("outcome")
    assert opt.loc["final val loss", "estimate"].tolist() == [0.5] * 4
    assert set(opt.loc["final val loss", "verdict"]) == {"equivalent"}
    # 40 agreeing seeds cannot rule out a 0.05 gap in the rate: honest "inconclusive".
    assert set(opt.loc["reached target", "verdict"]) == {"inconclusive"}
    assert "exact binomial bound" in opt.loc["reached target", "label"].iloc[0]
    # The same for epochs to target, bounded by the budget: 0.95^40 before Holm.
    assert set(opt.loc["epochs to target", "verdict"]) == {"inconclusive"}
    assert opt.loc["epochs to target", "p_equivalence"].tolist() == pytest.approx([0.95**40] * 4)
    assert set(tables.trend.table["verdict"]) == {"no variation"}
    assert "Seeds for 80% power" in text and "∞ (no difference observed)" in text


# ---------------------------------------------------------------------------------------------
# Comparisons


def _forty(optimizer: str, reached: int, framework: str = "lightning", batch: int = 32,
           loss_shift: float = 0.0, ett_base: int = 4) -> pd.DataFrame:
    """40 seeds; the first ``reached`` reach the target, losses spread over seeds."""
    acc = [1.0] * reached + [0.5] * (40 - reached)
    ett = [ett_base + s % 5 for s in range(reached)] + [None] * (40 - reached)
    loss = [0.05 + 0.01 * (s % 7) + loss_shift if s < reached else 0.69 for s in range(40)]
    return cell_runs(framework, optimizer, batch, acc=acc, ett=ett, loss=loss)


def test_optimizer_comparison_words_and_numbers_match_their_oracles() -> None:
    runs = table(_forty("sgd", 10), _forty("adam", 40, loss_shift=-0.02),
                 _forty("sgd", 30, batch=150), _forty("adam", 31, batch=150))

    comparison = stats.compare_optimizers(runs, n_boot=N_BOOT)
    rows = comparison.table.set_index(["batch_size", "outcome"])
    rate = rows.loc[(32, "reached target")]
    assert (rate["a"], rate["b"], rate["verdict"], rate["winner"]) == ("sgd", "adam", "better",
                                                                      "adam")
    assert rate["label"].startswith("adam reaches the target more often than sgd: rates 0.25 "
                                    "vs 1.00")
    assert "McNemar exact, paired by seed, Holm p<0.001" in rate["label"]
    assert rate["p_value"] == mcnemar([[10, 0], [30, 0]], exact=True).pvalue
    family = comparison.table[comparison.table["outcome"] == "reached target"]
    np.testing.assert_array_equal(family["p_holm"],
                                  multipletests(family["p_value"], method="holm")[1])
    loss = rows.loc[(32, "final val loss")]
    assert loss["label"].startswith("adam ends with a lower validation loss than sgd")
    assert loss["p_value"] == sps.brunnermunzel(
        runs.loc[runs["optimizer"].eq("sgd") & runs["batch_size"].eq(32), "final_val_loss"],
        runs.loc[runs["optimizer"].eq("adam") & runs["batch_size"].eq(32), "final_val_loss"],
    ).pvalue
    epochs = rows.loc[(32, "epochs to target")]
    assert epochs["label"].startswith("adam reaches the target sooner than sgd")
    close = rows.loc[(150, "reached target")]
    assert close["verdict"] == "inconclusive"
    assert "includes both a gap of 0.05 and none" in close["label"]


def test_diverged_runs_rank_as_the_worst_loss_and_failed_runs_are_left_out() -> None:
    good = _forty("sgd", 40)
    bad = _forty("adam", 40)
    bad.loc[:4, ["final_val_loss", "status"]] = [np.inf, "diverged"]
    bad.loc[5:6, ["final_val_loss", "status"]] = [np.nan, "failed"]

    row = stats.compare_optimizers(table(good, bad), n_boot=N_BOOT).table.set_index(
        "outcome").loc["final val loss"]
    kept = np.r_[0:5, 7:40]  # seeds 5 and 6 failed in adam: left out with their sgd partners
    a = good["final_val_loss"].to_numpy()[kept]
    b = bad["final_val_loss"].to_numpy()[kept]  # the diverged seeds 0-4 stay in, at +inf
    assert np.isinf(b[:5]).all()
    assert row["left_out"] == 4  # two failed adam seeds and their two sgd partners
    assert row["estimate"] == pytest.approx(stats.prob_lower(a, b))
    assert "note: 2 seeds left out (failed, so no loss in one cell or both)" in row["label"]
    assert math.isfinite(row["seeds_for_power"])  # ranks: +inf counts as the largest loss


def test_lightning_against_keras_is_a_paired_tost_and_never_equal_for_want_of_evidence() -> None:
    noise = np.random.default_rng(1).normal(0, 1e-3, size=40)
    lightning = _forty("adam", 30)
    keras = _forty("adam", 30, framework="keras")
    keras["final_val_loss"] = keras["final_val_loss"] + noise

    comparison = stats.compare_frameworks(table(lightning, keras), n_boot=N_BOOT)
    rows = comparison.table.set_index("outcome")
    loss = rows.loc["final val loss"]
    assert loss["verdict"] == "equivalent"
    assert loss["label"].startswith("equivalent within ±0.02 nats")
    assert loss["p_equivalence"] == ttost_paired(lightning["final_val_loss"].to_numpy(),
                                                 keras["final_val_loss"].to_numpy(),
                                                 -0.02, 0.02)[0]
    rate = rows.loc["reached target"]
    # Identical on all 40 seeds, yet 0.95^40 = 0.13: not enough seeds to show a gap below 0.05.
    assert rate["verdict"] == "inconclusive"
    assert rate["p_equivalence"] == pytest.approx(0.95**40)
    assert "needs at least 59 agreeing seeds" in rate["label"]
    assert rate["equivalence_test"] == "exact binomial bound (no spread for a TOST)"
    assert loss["equivalence_test"] == "TOST on per-seed differences"


def test_the_reading_guide_counts_agreeing_seeds_at_the_margins_in_use() -> None:
    from xorbench.stats_plots import _verdicts_text

    assert stats.agreeing_seeds_needed(0.05, 0.05) == 59  # 0.95^59 <= 0.05 < 0.95^58
    assert stats.agreeing_seeds_needed(0.2, 0.05) == 14  # 0.8^14 = 0.044 <= 0.05 < 0.8^13

    text = " ".join(_verdicts_text({"margin_rate": 0.2, "margin_epochs": 0.05}).split())
    assert ("14 agreeing seeds are needed to show a reached-target gap within ±0.2, and 59 for "
            "epochs to target within ±5% of the budget") in text


def test_lightning_against_keras_with_enough_agreeing_seeds_is_equivalent() -> None:
    acc = [1.0] * 60 + [0.5] * 20
    runs = table(cell_runs("lightning", acc=acc), cell_runs("keras", acc=acc))

    rate = stats.compare_frameworks(runs, n_boot=N_BOOT).table.set_index("outcome").loc[
        "reached target"]
    assert rate["verdict"] == "equivalent"
    assert rate["p_equivalence"] == pytest.approx(0.95**80)


def test_comparisons_below_30_seeds_are_withheld_with_a_reason() -> None:
    runs = table(*[cell_runs(fw, opt, batch, acc=[1.0] * 20 + [0.5] * 9)
                   for fw in ("lightning", "keras") for opt in ("sgd", "adam")
                   for batch in (1, 32)])

    for comparison in (stats.compare_optimizers(runs, n_boot=N_BOOT),
                       stats.compare_frameworks(runs, n_boot=N_BOOT),
                       stats.batch_size_trend(runs)):
        assert comparison.empty and comparison.too_few_seeds
        assert comparison.withheld.startswith("Below 30 seeds per cell this report shows "
                                              "descriptive statistics only, because")
        assert "29" in comparison.withheld


def test_only_the_cells_with_too_few_seeds_are_withheld() -> None:
    runs = table(_forty("sgd", 20), _forty("adam", 30),
                 cell_runs("lightning", "sgd", 150, acc=[1.0] * 12),
                 cell_runs("lightning", "adam", 150, acc=[1.0] * 12))

    comparison = stats.compare_optimizers(runs, n_boot=N_BOOT)
    assert set(comparison.table["batch_size"]) == {32}
    assert comparison.withheld.startswith("1 of 2 comparisons withheld")
    assert not comparison.too_few_seeds


def test_batch_size_trend_is_spearmans_rho_on_log2_batch_size() -> None:
    runs = table(_forty("sgd", 38, batch=1), _forty("sgd", 30, batch=8),
                 _forty("sgd", 12, batch=150))

    trend = stats.batch_size_trend(runs)
    row = trend.table.iloc[0]
    x = np.log2(runs["batch_size"].to_numpy(dtype=float))
    y = runs["epochs_to_target"].notna().to_numpy(dtype=float)
    rho, p = sps.spearmanr(x, y)
    assert (row["rho"], row["p_value"]) == (rho, p)
    assert row["verdict"] == "decreasing"
    assert row["label"].startswith("sgd (lightning) reaches the target less often at larger "
                                   "batch sizes")
    assert row["rates"] == "0.95, 0.75, 0.30"
    assert row["ci_low"] < rho < row["ci_high"]


# ---------------------------------------------------------------------------------------------
# Variance split for a factorial seed design


def factorial_runs(y: np.ndarray, outcome_column: str = "final_val_acc") -> pd.DataFrame:
    """One cell with init seed i x order seed j -> y[i, j] in ``outcome_column``."""
    n_init, n_order = y.shape
    acc = [0.9] * y.size
    runs = cell_runs(acc=acc, seeds=range(y.size))
    runs["init_index"] = np.repeat(np.arange(n_init), n_order)
    runs["order_index"] = np.tile(np.arange(n_order), n_init)
    runs[outcome_column] = y.ravel()
    return runs


def test_variance_split_matches_statsmodels_two_way_anova() -> None:
    y = np.array([[0.9, 0.8, 0.95, 0.7], [0.6, 0.55, 0.75, 0.5], [0.8, 0.9, 0.85, 0.6]])
    runs = factorial_runs(y)

    split = stats.variance_split(runs, outcomes=["final val acc"]).set_index("source")
    frame = pd.DataFrame({"y": y.ravel(), "init": runs["init_index"],
                          "order": runs["order_index"]})
    oracle = anova_lm(smf.ols("y ~ C(init) + C(order)", data=frame).fit())
    for source, term in [("init seed", "C(init)"), ("order seed", "C(order)"),
                         ("rest", "Residual")]:
        assert split.loc[source, "ss"] == pytest.approx(oracle.loc[term, "sum_sq"], rel=1e-10)
        assert split.loc[source, "df"] == oracle.loc[term, "df"]
    for source, term in [("init seed", "C(init)"), ("order seed", "C(order)")]:
        assert split.loc[source, "f"] == pytest.approx(oracle.loc[term, "F"], rel=1e-10)
        assert split.loc[source, "p_value"] == pytest.approx(oracle.loc[term, "PR(>F)"],
                                                             rel=1e-8)
    # Variance components by hand: (MS_source - MS_rest) / (levels of the other factor).
    ms = oracle["sum_sq"] / oracle["df"]
    init = (ms["C(init)"] - ms["Residual"]) / 4
    order = max((ms["C(order)"] - ms["Residual"]) / 3, 0.0)
    total = init + order + ms["Residual"]
    np.testing.assert_allclose(split["share"], [init / total, order / total,
                                                ms["Residual"] / total], rtol=1e-10)


def test_variance_split_explains_what_it_cannot_split() -> None:
    constant = factorial_runs(np.full((3, 3), 0.9))
    incomplete = factorial_runs(np.array([[0.9, 0.8], [0.7, np.nan]]))

    with no_warnings():
        flat = stats.variance_split(constant, outcomes=["final val acc"])
        holes = stats.variance_split(incomplete, outcomes=["final val acc"])
    assert flat["share"].isna().all() and flat["note"].str.startswith("no variance").all()
    assert holes["ss"].isna().all() and holes["note"].str.contains("incomplete").all()
    with pytest.raises(ValueError, match="runs lacks column"):
        stats.variance_split(f2_runs())


# ---------------------------------------------------------------------------------------------
# Figures, Markdown and the results directory


def _report_runs(frameworks: Sequence[str] = ("lightning", "keras"), *,
                 factorial: bool = False) -> pd.DataFrame:
    """40 seeds per cell; ``factorial`` labels them 5 init seeds x 8 order seeds instead."""
    rng = np.random.default_rng(0)
    cells = []
    for fw in frameworks:
        for opt, rates in (("sgd", (36, 20)), ("adam", (38, 37))):
            for batch, reached in zip((32, 150), rates, strict=True):
                cell = _forty(opt, reached, fw, batch)
                cell["final_val_loss"] += rng.normal(0, 1e-3, 40)
                cells.append(cell)
    runs = table(*cells)
    if factorial:
        runs["init_index"] = runs["seed"] // 8
        runs["order_index"] = runs["seed"] % 8
    return runs


def test_every_plot_takes_an_ax_returns_it_and_names_its_band() -> None:
    import matplotlib.pyplot as plt

    tables = stats.compute_tables(_report_runs(), n_boot=N_BOOT)
    variance = stats.variance_split(_report_runs(factorial=True))
    _, axes = plt.subplots(1, 4)
    curve = tables.reached_curve[tables.reached_curve["batch_size"] == 32]

    assert stats_plots.plot_reached_by_epoch(curve, ax=axes[0]) is axes[0]
    assert stats_plots.plot_success_rates(tables.summary, ax=axes[1]) is axes[1]
    assert stats_plots.plot_forest(tables.optimizers.table, ax=axes[2]) is axes[2]
    assert stats_plots.plot_variance_split(variance, ax=axes[3]) is axes[3]
    assert {c.get_gid() for c in axes[0].collections} == {"band"}
    assert "Wilson 95% interval" in axes[1].get_xlabel()
    assert "bootstrap interval" in axes[2].get_xlabel()
    for caption in (stats_plots.CAPTION_REACHED, stats_plots.CAPTION_RATES,
                    stats_plots.CAPTION_FOREST, stats_plots.CAPTION_VARIANCE):
        assert "Band:" in caption or "bar:" in caption or "Bars:" in caption


def test_figures_are_identical_from_run_to_run(tmp_path: Path) -> None:
    tables = stats.compute_tables(_report_runs(["lightning"]), n_boot=N_BOOT)
    variance = stats.variance_split(_report_runs(["lightning"], factorial=True))
    # One outcome of the variance split keeps the test fast; drawing is the same for all four.
    tables = dataclasses.replace(tables, variance=variance[variance["outcome"] == "final val acc"])

    with no_warnings():
        first = stats_plots.write_stats_figures(tables, tmp_path / "one")
    second = stats_plots.write_stats_figures(tables, tmp_path / "two")
    assert first == second
    # In the order the report shows them, so their numbers follow the reading order.
    assert [f.name for f in first] == ["stats_success_rates.png", "stats_reached_by_epoch.png",
                                       "stats_forest.png", "stats_variance_split.png"]
    for entry in first:
        assert (tmp_path / "one" / entry.name).read_bytes() == (
            tmp_path / "two" / entry.name).read_bytes()


def _results_dir(path: Path, runs: pd.DataFrame) -> Path:
    """A minimal results directory: manifest, runs and weights (glorot weights per run)."""
    path.mkdir()
    results.write_json_atomic({"experiment": {"name": "t", "n_train": 150}}, path / "manifest.json")
    runs.to_parquet(path / results.RUNS, index=False)
    weights = pd.DataFrame({
        "run_id": runs["run_id"], "hidden": "3x4",
        "params": [model.flatten(model.glorot_uniform((3, 4), int(s))) for s in runs["init_seed"]],
    })
    weights.to_parquet(path / results.WEIGHTS, index=False)
    return path


def test_stats_markdown_from_a_results_directory(tmp_path: Path) -> None:
    runs = _report_runs()
    path = _results_dir(tmp_path / "results", runs)

    text = stats_plots.stats_markdown(path)
    for heading in ("## Seed variance", "### Summary per cell", "### Optimizers compared",
                    "### Lightning against Keras", "### Batch-size trend"):
        assert heading in text
    assert "### Where the seed variance comes from" not in text
    assert "Below 30 seeds" not in text
    assert "adam reaches the target more often than sgd" in text
    assert "*Seeds for 80% power*" in text
    assert "Margins: reached-target rate ±0.05" in text
    x = make_xor(7).x_train
    weights = results.read_weights(path)
    expected = int(stats.dead_first_layer(weights, x).sum())
    summary = stats.cell_summary(*stats.load_inputs(path), n_boot=N_BOOT)
    assert int(summary["dead_first_layer"].sum()) == expected


def test_write_summary_round_trips_through_parquet(tmp_path: Path) -> None:
    summary = stats.cell_summary(f2_runs(), n_boot=N_BOOT)

    path = stats.write_summary(tmp_path, summary)
    back = pd.read_parquet(path)
    assert path.name == "summary.parquet"
    assert list(back.columns) == stats.SUMMARY_COLUMNS
    pd.testing.assert_frame_equal(back, summary, check_dtype=False)


def test_stats_never_imports_a_framework() -> None:
    import subprocess
    import sys

    code = ("import sys, xorbench.stats, xorbench.stats_plots; "
            "print(sorted(m for m in ('torch', 'lightning', 'keras', 'tensorflow') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_reached_figure_keeps_one_line_style_per_learning_rate_across_panels() -> None:
    fast = cell_runs(acc=[1.0] * 4)
    slow = cell_runs(acc=[1.0, 0.5, 0.5, 0.5], ett=[9, None, None, None]).assign(lr=0.1)
    other = cell_runs(optimizer="adam", acc=[1.0] * 4).assign(lr=0.1)  # only lr 0.1 here
    curve = stats.reached_by_epoch(table(fast, slow, other))

    fig = stats_plots.reached_by_epoch_figure(curve)
    styles = {ax.get_title(): {line.get_label(): line.get_linestyle() for line in ax.lines}
              for ax in fig.axes}
    assert styles["sgd, batch 32"] == {"lightning, sgd, batch 32, lr 0.05": "-",
                                       "lightning, sgd, batch 32, lr 0.1": "--"}
    assert styles["adam, batch 32"] == {"lightning, adam, batch 32, lr 0.1": "--"}
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["lightning: fraction", "lr 0.05", "lr 0.1",
                      "band: Wilson 95% interval at each epoch"]


def test_the_report_says_which_cells_are_only_described() -> None:
    runs = table(_forty("sgd", 20), _forty("adam", 30),
                 cell_runs("lightning", "sgd", 150, acc=[1.0] * 12),
                 cell_runs("lightning", "adam", 150, acc=[1.0] * 12))

    text = stats_plots.stats_markdown(stats.compute_tables(runs, n_boot=N_BOOT))
    assert ("**2 of 4 cells have fewer than 30 seeds (fewest: 12); they are described but not "
            "compared, because with so few seeds a test has little power") in text
    assert "1 of 2 comparisons withheld" in text


@pytest.mark.parametrize("reached", [0, 3])
def test_success_rates_draw_at_rates_of_exactly_0_and_1(reached: int) -> None:
    # Wilson's bound at a rate of 0 or 1 can miss the rate by a rounding error; the figure
    # must still draw (seen on a real smoke run where every seed reached the target).
    import matplotlib.pyplot as plt

    runs = cell_runs(acc=[1.0] * reached + [0.5] * (3 - reached))
    summary = stats.cell_summary(runs, n_boot=N_BOOT)

    _, ax = plt.subplots()
    assert stats_plots.plot_success_rates(summary, ax=ax) is ax


def test_seeds_for_prob_lower_is_inf_when_statsmodels_finds_no_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen on the real 100-seed grid: statsmodels estimated P = 0.5 on the same samples for
    # which prob_lower was 0.5 +- a little more than 1e-3, and raised instead of answering.
    def refuse(*_: object, **__: object) -> None:
        raise ValueError("Estimated relative effect is effectively 0.5")

    monkeypatch.setattr(stats, "samplesize_rank_compare_onetail", refuse)

    assert stats.seeds_for_prob_lower([0.1, 0.2, 0.3, 0.5], [0.15, 0.25, 0.35, 0.6]) == math.inf


def test_a_factorial_design_tests_only_its_independent_seeds(tmp_path: Path) -> None:
    runs = _report_runs(factorial=True)  # 5 init x 8 order seeds: 5 independent seeds a cell
    path = _results_dir(tmp_path / "results", runs)

    tables = stats.tables_from_dir(path, n_boot=N_BOOT)
    text = stats_plots.stats_markdown(tables)

    assert tables.summary["seeds"].eq(5).all()
    assert tables.optimizers.empty and tables.frameworks.empty  # 5 < 30: described only
    assert tables.variance is not None and set(tables.variance["n_order"]) == {8}
    assert stats_plots.FACTORIAL_SUBSET in text
    assert "### Where the seed variance comes from" in text
    assert "Below 30 seeds per cell" in text
