"""Seed-variance statistics: many seeds per cell -> summaries, comparisons and variance splits.

Every function here is a pure function of the runs table (one row per run, columns
:data:`xorbench.results.RUN_COLUMNS`), plus the weights table and the training inputs for the
dead-first-layer count. Nothing here imports a framework, and nothing draws random numbers
except the bootstrap, which is seeded from ``random_state``.

Conventions
-----------
Reached.
    A run reached the target when its ``epochs_to_target`` is set: some epoch had validation
    accuracy >= the target. Stuck, diverged and failed runs stay in every count.
Intervals.
    95%. Rates get the Wilson score interval (``statsmodels`` ``proportion_confint``); every other
    interval is a percentile bootstrap over seeds (``scipy.stats.bootstrap``, ``method=
    "percentile"``, generator seeded from ``random_state``), resampling pairs together when the
    two cells share their seeds. Percentile, not BCa: BCa is undefined when every seed has the
    same value, which is common here (every seed reaches the target), while the percentile
    interval then has zero width, which is the honest answer. A sample of fewer than two values
    gets no interval (NaN).
Comparisons.
    Made only between cells with at least :data:`MIN_SEEDS_FOR_TESTS` seeds; below that a
    :class:`Comparison` comes back empty with the reason. Each result is labelled
    ``better``, ``equivalent`` (a TOST within a stated margin, never "not significant, so the
    same") or ``inconclusive``. Holm's correction is applied per family: one family per table,
    outcome and kind of test (difference or equivalence).
Zero spread.
    A t or Brunner-Munzel statistic is undefined when every value (or every per-seed
    difference) is the same. Such samples are handled explicitly, never through a NaN: see
    :func:`mean_difference_pvalue`, :func:`tost_pvalue`, :func:`bounded_tost_bound` and
    :func:`brunner_munzel_pvalue`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.nonparametric import samplesize_rank_compare_onetail
from statsmodels.stats.power import NormalIndPower, TTestIndPower, TTestPower
from statsmodels.stats.proportion import proportion_confint, proportion_effectsize
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

from xorbench import results
from xorbench.adapters.base import FRAMEWORKS
from xorbench.data import N_TRAIN, make_xor
from xorbench.model import hidden_activations, unflatten
from xorbench.optimizers import OPTIMIZERS
from xorbench.results import CELL_KEYS, SUMMARY

logger = logging.getLogger(__name__)


# Below this many seeds per cell, tests are withheld and only descriptive statistics are shown.
MIN_SEEDS_FOR_TESTS = 30
ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.8
N_BOOT = 2000

# Equivalence margins. The loss margin is in nats of mean validation cross-entropy per seed; the
# epochs margin is a fraction of the cell's epoch budget.
MARGIN_RATE = 0.05
MARGIN_LOSS = 0.02
MARGIN_PROB = 0.10
MARGIN_EPOCHS = 0.05

# A run that did not reach the target is "stuck" when its final validation accuracy is within
# STUCK_TOLERANCE of one of these levels: 0.5 is a constant prediction, 0.75 three quadrants.
STUCK_LEVELS: dict[str, float] = {"stuck_near_0_5": 0.5, "stuck_near_0_75": 0.75}
STUCK_TOLERANCE = 0.1
FAILURE_KINDS: tuple[str, ...] = (*STUCK_LEVELS, "other_not_reached", "diverged", "failed")

# Columns that identify a seed; runs of two cells with equal values share initial weights and
# batch order, so they can be paired.
SEED_KEYS: tuple[str, ...] = ("seed", "init_seed", "order_seed", "data_seed")
RUN_NEEDS: tuple[str, ...] = (
    *CELL_KEYS, "seed", "status", "final_val_loss", "final_val_acc", "epochs_to_target",
)

WHY_DESCRIPTIVE = (
    "with so few seeds a test has little power, so real differences mostly come out "
    "'not significant', which is easily misread as 'the same', and the approximations behind "
    "the Brunner-Munzel, t and TOST tests are unreliable. The intervals in the summary still "
    "show how uncertain each number is."
)
DESCRIPTIVE_ONLY = (
    "Below {min_seeds} seeds per cell this report shows descriptive statistics only, because "
    + WHY_DESCRIPTIVE
)

SUMMARY_COLUMNS: list[str] = [
    *CELL_KEYS,
    "target", "seeds", "reached", "reached_rate", "reached_low", "reached_high",
    *FAILURE_KINDS, "dead_first_layer",
    "val_acc_n", "val_acc_median", "val_acc_q1", "val_acc_q3", "val_acc_iqm",
    "val_acc_mean", "val_acc_mean_low", "val_acc_mean_high",
    "val_loss_n", "val_loss_median", "val_loss_q1", "val_loss_q3", "val_loss_iqm",
    "val_loss_mean", "val_loss_mean_low", "val_loss_mean_high",
    "epochs_median", "epochs_restricted_mean", "epochs_restricted_low", "epochs_restricted_high",
]

COMPARISON_COLUMNS: list[str] = [
    "family", "outcome", "a", "b", "design", "n_a", "n_b", "left_out", "value_a", "value_b",
    "estimand", "estimate", "ci_low", "ci_high", "test", "p_value", "p_holm",
    "equivalence_test", "margin", "p_equivalence", "p_equivalence_holm", "verdict", "winner",
    "label", "seeds_for_power", "note",
]

TREND_COLUMNS: list[str] = [
    "batch_sizes", "rates", "n", "rho", "ci_low", "ci_high", "p_value", "p_holm", "verdict",
    "label", "seeds_for_power",
]

VARIANCE_COLUMNS: list[str] = [
    "outcome", "source", "n_init", "n_order", "df", "ss", "ms", "f", "p_value", "variance",
    "share", "ss_share", "note",
]
VARIANCE_SOURCES: tuple[str, ...] = ("init seed", "order seed", "rest")


# ---------------------------------------------------------------------------------------------
# Small helpers


def _require(frame: pd.DataFrame, needed: Sequence[str], name: str) -> None:
    """Raise ValueError naming the missing columns and the ones present."""
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lacks column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, frame.columns))}"
        )


def _rank(values: pd.Series, known: Sequence[str]) -> pd.Series:
    """Position of each value in ``known``; unknown values after, alphabetically."""
    extra = sorted(set(values) - set(known))
    order = {name: i for i, name in enumerate([*known, *extra])}
    return pd.Series([order[v] for v in values], index=values.index)


def in_cell_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by optimizer, batch size, lr, hidden, epochs, framework (the report's order)."""
    present = [key for key in ("batch_size", "lr", "hidden", "epochs") if key in frame.columns]
    ranked = frame.assign(
        _optimizer=_rank(frame["optimizer"], OPTIMIZERS) if "optimizer" in frame else 0,
        _framework=_rank(frame["framework"], FRAMEWORKS) if "framework" in frame else 0,
    )
    ordered = ranked.sort_values(["_optimizer", *present, "_framework"], kind="stable")
    return ordered.drop(columns=["_optimizer", "_framework"]).reset_index(drop=True)


def _groups(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """(key values, rows) per group, in report order."""
    ordered = in_cell_order(frame)
    return [
        (dict(zip(keys, values, strict=True)), rows)
        for values, rows in ordered.groupby(list(keys), sort=False)
    ]


def _finite(values: Any) -> np.ndarray:
    """The finite values of ``values`` as float64, shape (k,)."""
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return numbers[np.isfinite(numbers)]


def _constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def reached(runs: pd.DataFrame) -> pd.Series:
    """Whether each run reached the target (an epoch to target is set); bool, one per run."""
    return runs["epochs_to_target"].notna().astype(bool)


def capped_epochs(runs: pd.DataFrame) -> pd.Series:
    """min(epochs to target, epoch budget) per run; a run that never reached counts the budget.

    This is the restricted time to target: its mean over seeds is the restricted mean (the area
    under the not-yet-reached curve up to the budget), which stays defined whatever the share of
    runs that never reached the target.
    """
    budget = runs["epochs"].astype(float)
    epochs = pd.to_numeric(runs["epochs_to_target"]).astype(float)
    return epochs.fillna(budget).clip(upper=budget)


# ---------------------------------------------------------------------------------------------
# Primitive statistics, each tested against scipy or statsmodels


def wilson_interval(
    successes: Any, trials: Any, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of ``successes / trials``; arrays of one shape, NaN where trials = 0.

    Parameters
    ----------
    successes, trials
        Counts, scalars or arrays of the same shape.
    confidence
        Two-sided coverage, 0.95 by default.

    Returns
    -------
    (low, high)
        float64 arrays of the shape of ``trials``, in [0, 1].
    """
    k = np.asarray(successes, dtype=float)
    n = np.asarray(trials, dtype=float)
    low, high = np.full(n.shape, np.nan), np.full(n.shape, np.nan)
    some = n > 0
    if np.any(some):
        lo, hi = proportion_confint(
            np.broadcast_to(k, n.shape)[some], n[some], alpha=1 - confidence, method="wilson"
        )
        low[some], high[some] = lo, hi
    return low, high


def iqm(values: Any) -> float:
    """Interquartile mean (mean of the middle half), ``trim_mean(values, 0.25)``; NaN if empty."""
    x = np.asarray(values, dtype=float)
    return float(sps.trim_mean(x, 0.25)) if x.size else math.nan


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def prob_lower(a: Any, b: Any, axis: int = -1) -> Any:
    """P(a < b) + P(a = b) / 2 over all (a, b) pairs: the chance that A beats B on a loss.

    Computed from mid-ranks (the Mann-Whitney U of ``b`` over n*m), so a batch of bootstrap
    resamples of shape (resamples, n) and (resamples, m) costs O(n + m) memory per resample.

    Parameters
    ----------
    a, b
        Values of shape (..., n) and (..., m) along ``axis``; +inf is allowed, NaN is not.

    Returns
    -------
    float or ndarray
        In [0, 1]; 0.5 means neither is lower more often.
    """
    x = np.moveaxis(np.asarray(a, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(b, dtype=float), axis, -1)
    n, m = x.shape[-1], y.shape[-1]
    ranks = sps.rankdata(np.concatenate([x, y], axis=-1), axis=-1)
    u_b = ranks[..., n:].sum(axis=-1) - m * (m + 1) / 2
    return u_b / (n * m)


def bootstrap_distribution(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., Any],
    *,
    paired: bool = False,
    n_boot: int = N_BOOT,
    random_state: int = 0,
) -> np.ndarray | None:
    """Bootstrap replicates of ``statistic`` over ``samples``, shape (n_boot,); None if n < 2.

    A thin wrapper of ``scipy.stats.bootstrap`` (percentile method, vectorised statistic taking
    ``axis``), with a generator seeded from ``random_state`` so results repeat exactly.
    """
    if any(len(sample) < 2 for sample in samples):
        return None
    result = sps.bootstrap(
        tuple(np.asarray(s, dtype=float) for s in samples),
        statistic,
        n_resamples=n_boot,
        paired=paired,
        vectorized=True,
        method="percentile",
        confidence_level=CONFIDENCE,
        batch=min(n_boot, 500),
        rng=np.random.default_rng(random_state),
    )
    distribution: np.ndarray = result.bootstrap_distribution
    return distribution


def bootstrap_interval(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., Any],
    *,
    paired: bool = False,
    n_boot: int = N_BOOT,
    random_state: int = 0,
    confidence: float = CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic``; (NaN, NaN) when a sample has < 2 values.

    When every value is the same the interval has zero width at that value, with no warning.

    Parameters
    ----------
    samples
        One or two 1-D samples (seeds); with ``paired`` they have one length and are resampled
        by the same seed indices.
    statistic
        Vectorised: takes the samples and ``axis`` and reduces along it.
    """
    replicates = bootstrap_distribution(
        samples, statistic, paired=paired, n_boot=n_boot, random_state=random_state
    )
    return _percentile_interval(replicates, confidence)


def _percentile_interval(replicates: np.ndarray | None,
                         confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` share of the replicates; NaN without replicates."""
    if replicates is None:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-adjusted p-values, equal to ``multipletests(p, method="holm")[1]``; NaN stays NaN.

    Written out rather than called: statsmodels' Holm branch runs ``gc.collect()`` on every call
    (statsmodels PR #8671 removed it but was closed), about 0.15 s each here, and a report makes
    a dozen calls. The test suite checks this against ``multipletests`` to the last digit. NaN
    p-values (no test possible) are left out of the family rather than counted as tests.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    steps = p[order] * (len(order) - np.arange(len(order)))
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def mcnemar_pvalue(a: Any, b: Any) -> float:
    """Exact McNemar p-value for paired binary outcomes ``a``, ``b`` of shape (seeds,).

    The 2x2 table is [[both, a only], [b only, neither]]; the exact test is a binomial test on
    the discordant pairs (p = 1 when there are none).
    """
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    table = [[int(np.sum(x & y)), int(np.sum(x & ~y))], [int(np.sum(~x & y)), int(np.sum(~x & ~y))]]
    return float(mcnemar(table, exact=True).pvalue)


def fisher_pvalue(a: Any, b: Any) -> float:
    """Fisher's exact p-value for two unpaired binary samples (no shared seeds)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    table = [[int(x.sum()), int((~x).sum())], [int(y.sum()), int((~y).sum())]]
    return float(sps.fisher_exact(table).pvalue)


def _rank_degenerate(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the Brunner-Munzel variance is zero: every value tied, or A and B fully apart."""
    everything = np.concatenate([a, b])
    return _constant(everything) or a.max() < b.min() or b.max() < a.min()


def brunner_munzel_pvalue(a: Any, b: Any) -> float:
    """Two-sided Brunner-Munzel p-value (``scipy.stats.brunnermunzel``, t distribution).

    Where its variance is zero scipy returns NaN; then: every value tied gives p = 1, and A and
    B fully apart gives the exact permutation p-value of such a split, 2 / C(n + m, n) (only one
    labelling of the pooled values puts all of A below all of B).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if _rank_degenerate(x, y):
        if _constant(np.concatenate([x, y])):
            return 1.0
        return min(1.0, 2.0 / math.comb(len(x) + len(y), len(x)))
    return float(sps.brunnermunzel(x, y).pvalue)


def bootstrap_tost_pvalue(replicates: np.ndarray, low: float, high: float) -> float:
    """TOST p-value from bootstrap replicates: the larger share of them at or beyond a margin.

    The percentile bootstrap test that matches the percentile interval: p < alpha exactly when
    the (1 - 2 alpha) percentile interval lies inside (low, high), so the verdict agrees with
    the interval shown, and pairs resampled together keep the pairing by seed.
    """
    values = np.asarray(replicates, dtype=float)
    return float(max(np.mean(values <= low), np.mean(values >= high)))


def _zero_spread(a: np.ndarray, b: np.ndarray, paired: bool) -> bool:
    return _constant(a - b) if paired else _constant(a) and _constant(b)


def mean_difference_pvalue(a: Any, b: Any, *, paired: bool) -> float:
    """Two-sided t-test p-value of mean(a) = mean(b): paired (``ttest_rel``) or Welch.

    With zero spread (every per-seed difference equal, or both samples constant) the t statistic
    is undefined; its limit is used: p = 1 when the means are equal, else 0.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if _zero_spread(x, y, paired):
        return 1.0 if np.mean(x) == np.mean(y) else 0.0
    test = sps.ttest_rel(x, y) if paired else sps.ttest_ind(x, y, equal_var=False)
    return float(test.pvalue)


def bounded_tost_bound(
    a: Any, b: Any, margin: float, *, span: float = 1.0, paired: bool
) -> float:
    """Exact, conservative equivalence p-value for values in [0, ``span``] with no spread.

    Paired: each per-seed difference lies in [-span, span] and is 0 where the two runs agree,
    so |mean difference| <= span x the share of seeds that disagree; an exact one-sided binomial
    test (``scipy.stats.binomtest``) that this share is below margin / span shows the mean
    difference is within the margin. Unpaired, both samples one constant c: each mean can move
    from c by at most span x the share of its runs that differ from c, in one direction when c
    is 0 or span (so the larger share must be below margin / span), in either otherwise (half
    that); different constants give 1. For rates span is 1 and the share is the discordant
    seeds; for epochs to target span is the budget.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    share = min(margin / span, 1.0)
    if paired:
        disagree = int(np.sum(x != y))
        return float(sps.binomtest(disagree, len(x), share, alternative="less").pvalue)
    if x[0] != y[0]:
        return 1.0
    share = share if x[0] in (0.0, span) else share / 2
    bounds = [sps.binomtest(0, len(s), share, alternative="less").pvalue for s in (x, y)]
    return float(max(bounds))


def tost_pvalue(
    a: Any, b: Any, margin: float, *, paired: bool, span: float | None = None
) -> float:
    """TOST p-value that mean(a) - mean(b) lies within +- ``margin``.

    ``statsmodels`` ``ttost_paired`` on the per-seed differences, or ``ttost_ind`` (Welch) when
    seeds are not shared. With zero spread the t statistic is undefined: outcomes bounded in
    [0, ``span``] (rates, epochs to target) then use :func:`bounded_tost_bound`; unbounded ones
    (``span`` None, a loss) the t limit, 0 inside the margin and 1 outside.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if _zero_spread(x, y, paired):
        if span is not None:
            return bounded_tost_bound(x, y, margin, span=span, paired=paired)
        return 0.0 if abs(np.mean(x) - np.mean(y)) < margin else 1.0
    if paired:
        return float(ttost_paired(x, y, -margin, margin)[0])
    return float(ttost_ind(x, y, -margin, margin, usevar="unequal")[0])


# ---------------------------------------------------------------------------------------------
# Power: how many seeds per cell a difference of the observed size needs


def seeds_for_rates(
    rate_a: float, rate_b: float, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Seeds per cell to detect ``rate_a`` vs ``rate_b`` (two-sided, Cohen's h, normal test).

    Computed as for unpaired cells (``NormalIndPower``); pairing by seed needs no more when the
    outcomes of a seed are positively correlated. inf when the rates are equal.
    """
    effect = float(proportion_effectsize(rate_a, rate_b))
    if effect == 0:
        return math.inf
    n = NormalIndPower().solve_power(
        effect_size=abs(effect), alpha=alpha, power=power, ratio=1.0, alternative="two-sided"
    )
    return float(math.ceil(n))


def seeds_for_mean_difference(
    a: Any, b: Any, *, paired: bool, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Seeds per cell for a t-test to detect the observed mean difference (Cohen's d).

    Paired: d = mean / sd of the per-seed differences (``TTestPower``); unpaired: d over the
    pooled sd (``TTestIndPower``). inf for no difference; NaN when the spread is zero.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(np.mean(x) - np.mean(y))
    if diff == 0:
        return math.inf
    if _zero_spread(x, y, paired) or min(len(x), len(y)) < 2:
        return math.nan
    if paired:
        effect, solver = diff / float(np.std(x - y, ddof=1)), TTestPower()
    else:
        pooled = math.sqrt((np.var(x, ddof=1) + np.var(y, ddof=1)) / 2)
        effect, solver = diff / pooled, TTestIndPower()
    n = solver.solve_power(
        effect_size=abs(effect), alpha=alpha, power=power, alternative="two-sided"
    )
    return float(math.ceil(n))


def seeds_for_prob_lower(
    a: Any, b: Any, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Seeds per cell for a rank test to detect the observed P(A lower) (two-sided).

    ``samplesize_rank_compare_onetail`` with the observed samples as the alternative; it works
    on ranks, so +inf (a diverged run's loss) is replaced by a finite value above all others.
    inf when P(A lower) is within 0.001 of 0.5 (statsmodels' own "no effect" tolerance); NaN
    when A and B are fully apart (no spread to base it on).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if abs(float(prob_lower(x, y)) - 0.5) <= 1e-3:
        return math.inf
    if _rank_degenerate(x, y):
        return math.nan
    finite = np.concatenate([x, y])
    finite = finite[np.isfinite(finite)]
    top = float(finite.max()) + 1.0 if finite.size else 0.0
    x, y = np.where(np.isfinite(x), x, top), np.where(np.isfinite(y), y, top)
    try:
        result = samplesize_rank_compare_onetail(y, x, alpha, power, alternative="two-sided")
    except ValueError:
        # statsmodels estimates the effect its own way and refuses when it finds none (P = 0.5),
        # which can happen here although prob_lower above was not within its tolerance.
        return math.inf
    return float(math.ceil(result.nobs_treat))


def power_seeds_needed(
    outcome: str, a: Any, b: Any, *, paired: bool = True, alpha: float = ALPHA,
    power: float = POWER,
) -> float:
    """Seeds per cell that a difference of the size observed between ``a`` and ``b`` needs.

    ``outcome`` picks the test the comparison tables use: "rate" (0/1 values,
    :func:`seeds_for_rates`), "prob_lower" (:func:`seeds_for_prob_lower`) or "mean"
    (:func:`seeds_for_mean_difference`, paired or not).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if outcome == "rate":
        return seeds_for_rates(float(x.mean()), float(y.mean()), alpha=alpha, power=power)
    if outcome == "prob_lower":
        return seeds_for_prob_lower(x, y, alpha=alpha, power=power)
    if outcome == "mean":
        return seeds_for_mean_difference(x, y, paired=paired, alpha=alpha, power=power)
    raise ValueError(f"outcome must be one of rate, prob_lower, mean; received {outcome!r}")


def seeds_for_correlation(
    rho: float, *, alpha: float = ALPHA, power: float = POWER
) -> float:
    """Runs needed for a correlation test to detect ``rho`` (Fisher z approximation).

    n = ((z_{1-alpha/2} + z_power) / atanh(rho))^2 + 3; statsmodels has no power function for a
    correlation. inf when rho is 0, NaN when it is undefined or +-1.
    """
    if not math.isfinite(rho) or abs(rho) >= 1:
        return math.nan
    if rho == 0:
        return math.inf
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return float(math.ceil((z / math.atanh(abs(rho))) ** 2 + 3))


# ---------------------------------------------------------------------------------------------
# Runs: outcome kinds and dead first layers


def _x_for(run_ids: pd.Series, runs: pd.DataFrame,
           x_train: np.ndarray | Mapping[int, np.ndarray]) -> list[np.ndarray]:
    """The training inputs of each run: one array for all, or looked up by data seed."""
    if not isinstance(x_train, Mapping):
        return [np.asarray(x_train)] * len(run_ids)
    seed_of = dict(zip(runs["run_id"], runs["data_seed"], strict=True))
    return [np.asarray(x_train[int(seed_of[run_id])]) for run_id in run_ids]


def dead_first_layer(
    weights: pd.DataFrame,
    x_train: np.ndarray | Mapping[int, np.ndarray],
    runs: pd.DataFrame | None = None,
) -> pd.Series:
    """Whether each run's first layer is dead: no unit has a positive pre-activation on any input.

    A dead ReLU layer passes zeros on, so the network predicts a constant and its gradient into
    that layer is exactly zero: it can never recover (field case F1).

    Parameters
    ----------
    weights
        The weights table: ``run_id``, ``hidden`` (such as "3x4") and ``params`` (flat vector).
    x_train
        Training inputs of shape (n, 2), or a mapping from data seed to such arrays when the
        data were drawn per run (then ``runs`` supplies each run's ``data_seed``).

    Returns
    -------
    Series
        Nullable boolean, indexed by run_id; NA for a run whose first layer is not finite (a
        diverged run: its NaN pre-activations say nothing about dead units).
    """
    _require(weights, results.WEIGHT_COLUMNS, "weights")
    if isinstance(x_train, Mapping) and runs is None:
        raise ValueError("x_train given per data seed needs runs, to look up each data_seed")
    inputs = _x_for(weights["run_id"], runs if runs is not None else weights, x_train)
    dead: list[bool | None] = []
    for params, hidden, x in zip(weights["params"], weights["hidden"], inputs, strict=True):
        layers = unflatten(np.asarray(params, dtype=np.float32), results.parse_hidden(hidden))
        kernel, bias = layers[0]
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            dead.append(None)
            continue
        # float64: a finite float32 layer of a nearly diverged run can still overflow.
        first = [(kernel.astype(np.float64), bias.astype(np.float64))]
        dead.append(not bool(np.any(hidden_activations(first, x) > 0)))
    return pd.Series(dead, index=pd.Index(weights["run_id"], name="run_id"), dtype="boolean")


def failure_kinds(runs: pd.DataFrame, *, tolerance: float = STUCK_TOLERANCE) -> pd.Series:
    """The failure kind of each run, or "" for a run that reached the target and stayed ``ok``.

    Kinds, checked in this order: "failed" and "diverged" (the run's status), then, for ``ok``
    runs that never reached the target, "stuck_near_0_5" / "stuck_near_0_75" (final validation
    accuracy within ``tolerance`` of 0.5 / 0.75) and else "other_not_reached". A run that
    reached the target at some epoch is never counted as stuck, whatever its final accuracy.
    """
    status = runs["status"].astype(str).to_numpy()
    done = reached(runs).to_numpy()
    acc = pd.to_numeric(runs["final_val_acc"]).astype(float).to_numpy()
    conditions = [status == "failed", status == "diverged", done]
    choices = ["failed", "diverged", ""]
    for kind, level in STUCK_LEVELS.items():
        conditions.append(np.abs(acc - level) <= tolerance)
        choices.append(kind)
    kinds = np.select(conditions, choices, default="other_not_reached")
    return pd.Series(kinds, index=runs.index, name="failure")


# ---------------------------------------------------------------------------------------------
# Summary per cell


def median_epochs(epochs_to_target: pd.Series) -> float:
    """The first epoch by which at least half of the seeds had reached the target, else inf.

    The median of the censored epochs to target: runs that never reached count as later than
    every run that did, so none is dropped; inf means "not reached".
    """
    needed = math.ceil(len(epochs_to_target) / 2)
    times = np.sort(_finite(epochs_to_target))
    if needed == 0 or len(times) < needed:
        return math.inf
    return float(times[needed - 1])


def describe_values(
    values: Any, *, n_boot: int = N_BOOT, random_state: int = 0
) -> dict[str, float]:
    """n, median, q1, q3, IQM, mean and its bootstrap 95% interval of the finite ``values``.

    Quartiles interpolate linearly (numpy's default); IQM is ``trim_mean(x, 0.25)``.
    """
    x = _finite(values)
    if x.size == 0:
        keys = ("median", "q1", "q3", "iqm", "mean", "mean_low", "mean_high")
        return {"n": 0, **dict.fromkeys(keys, math.nan)}
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    low, high = bootstrap_interval((x,), _mean, n_boot=n_boot, random_state=random_state)
    return {
        "n": int(x.size), "median": float(median), "q1": float(q1), "q3": float(q3),
        "iqm": iqm(x), "mean": float(np.mean(x)), "mean_low": low, "mean_high": high,
    }


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in values.items()}


def _summarise_cell(cell: pd.DataFrame, n_boot: int, random_state: int) -> dict[str, Any]:
    """Every summary column of one cell except its keys; see :func:`cell_summary`."""
    n = len(cell)
    k = int(reached(cell).sum())
    low, high = wilson_interval(k, n)
    kinds = cell["_failure"]
    dead = cell["_dead"].dropna()
    capped = capped_epochs(cell).to_numpy()
    epochs_low, epochs_high = bootstrap_interval(
        (capped,), _mean, n_boot=n_boot, random_state=random_state
    )
    return {
        "target": float(cell["target"].iloc[0]) if "target" in cell else math.nan,
        "seeds": n, "reached": k, "reached_rate": k / n,
        "reached_low": float(low), "reached_high": float(high),
        **{kind: int((kinds == kind).sum()) for kind in FAILURE_KINDS},
        "dead_first_layer": int(dead.astype(bool).sum()) if len(dead) else pd.NA,
        **_prefixed("val_acc", describe_values(cell["final_val_acc"], n_boot=n_boot,
                                               random_state=random_state)),
        **_prefixed("val_loss", describe_values(cell["final_val_loss"], n_boot=n_boot,
                                                random_state=random_state)),
        "epochs_median": median_epochs(cell["epochs_to_target"]),
        "epochs_restricted_mean": float(np.mean(capped)),
        "epochs_restricted_low": epochs_low, "epochs_restricted_high": epochs_high,
    }


def _dead_per_run(runs: pd.DataFrame, weights: pd.DataFrame | None,
                  x_train: np.ndarray | Mapping[int, np.ndarray] | None) -> pd.Series:
    """Dead-first-layer flag per run (nullable: NA without weights or inputs), runs' index."""
    if weights is None or x_train is None or "run_id" not in runs:
        return pd.Series(pd.NA, index=runs.index, dtype="boolean")
    own = weights[weights["run_id"].isin(runs["run_id"])]  # runs may be a subset
    dead = dead_first_layer(own, x_train, runs)
    return runs["run_id"].map(dead).astype("boolean")


def cell_summary(
    runs: pd.DataFrame,
    weights: pd.DataFrame | None = None,
    x_train: np.ndarray | Mapping[int, np.ndarray] | None = None,
    *,
    n_boot: int = N_BOOT,
    random_state: int = 0,
    tolerance: float = STUCK_TOLERANCE,
) -> pd.DataFrame:
    """One row per cell (framework x optimizer x batch size x lr x hidden x epochs), report order.

    Parameters
    ----------
    runs
        The runs table, one row per run.
    weights, x_train
        The weights table and the training inputs, shape (n, 2) (or a mapping from data seed to
        inputs); without them ``dead_first_layer`` is NA.
    n_boot, random_state
        Bootstrap resamples and the seed of their generator.
    tolerance
        Half-width of the accuracy windows that count a run as stuck near 0.5 or 0.75.

    Returns
    -------
    DataFrame
        ==========================  ==============================================================
        column                      meaning
        ==========================  ==============================================================
        framework ... epochs        the cell keys (:data:`xorbench.results.CELL_KEYS`)
        target                      validation accuracy that counts as reached
        seeds                       runs in the cell, every status
        reached                     runs that reached the target at some epoch
        reached_rate                reached / seeds
        reached_low, reached_high   Wilson 95% interval of reached_rate
        stuck_near_0_5              ok runs, not reached, final val acc within tolerance of 0.5
        stuck_near_0_75             the same near 0.75 (three of four quadrants right)
        other_not_reached           ok runs, not reached, not stuck
        diverged, failed            runs with that status (diverged may have reached first)
        dead_first_layer            runs whose final first layer is inactive on every training
                                    point (NA without weights; may overlap the kinds above)
        val_acc_n                   runs with a finite final validation accuracy
        val_acc_median, _q1, _q3    median and quartiles (linear interpolation)
        val_acc_iqm                 interquartile mean, ``trim_mean(x, 0.25)``
        val_acc_mean                mean
        val_acc_mean_low, _high     percentile bootstrap 95% interval of the mean
        val_loss_*                  the same for the final validation loss (nats)
        epochs_median               first epoch by which half the seeds had reached; inf if never
        epochs_restricted_mean      mean over seeds of min(epochs to target, epochs budget)
        epochs_restricted_low/high  percentile bootstrap 95% interval of that mean
        ==========================  ==============================================================
    """
    _require(runs, RUN_NEEDS, "runs")
    frame = runs.assign(
        _failure=failure_kinds(runs, tolerance=tolerance),
        _dead=_dead_per_run(runs, weights, x_train),
    )
    rows = [
        {**keys, **_summarise_cell(cell, n_boot, random_state)}
        for keys, cell in _groups(frame, CELL_KEYS)
    ]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary["dead_first_layer"] = summary["dead_first_layer"].astype("Int64")
    return summary


def reached_by_epoch(runs: pd.DataFrame, *, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Fraction of seeds that had reached the target by each epoch, per cell (tidy).

    Runs that never reach are censored at the budget: they count in the denominator at every
    epoch, so the curve is the complement of the Kaplan-Meier curve with censoring at the end.

    Returns
    -------
    DataFrame
        The cell keys, ``epoch`` (0 to the cell's epochs), ``seeds``, ``reached`` (count),
        ``fraction`` and ``low``/``high`` (pointwise Wilson interval); one row per cell x epoch.
    """
    _require(runs, RUN_NEEDS, "runs")
    frames = []
    for keys, cell in _groups(runs, CELL_KEYS):
        epochs = np.arange(int(keys["epochs"]) + 1)
        times = np.sort(_finite(cell["epochs_to_target"]))
        counts = np.searchsorted(times, epochs, side="right")
        low, high = wilson_interval(counts, np.full(epochs.shape, len(cell)), confidence)
        frames.append(pd.DataFrame({
            **{key: [value] * len(epochs) for key, value in keys.items()},
            "epoch": epochs, "seeds": len(cell), "reached": counts,
            "fraction": counts / len(cell), "low": low, "high": high,
        }))
    columns = [*CELL_KEYS, "epoch", "seeds", "reached", "fraction", "low", "high"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# ---------------------------------------------------------------------------------------------
# Comparisons: shared machinery


@dataclass(frozen=True)
class Comparison:
    """A comparison table and, when some or all comparisons were not made, why.

    Attributes
    ----------
    table
        One row per comparison (columns :data:`COMPARISON_COLUMNS` or :data:`TREND_COLUMNS`,
        after the group keys); empty when nothing could be compared. Comparison columns:

        ====================  =================================================================
        family                the Holm family: "<table>: <outcome>"
        outcome               "reached target", "final val loss" or "epochs to target"
        a, b                  the two optimizers (or frameworks) compared, in report order
        design                "paired" (matched by seed) or "unpaired"
        n_a, n_b              values used on each side
        left_out              runs left out (no value, or no partner seed); see ``note``
        value_a, value_b      rate, median loss (P rows), mean loss or restricted mean epochs
        estimand, estimate    what is estimated (in words, naming a and b) and its value
        ci_low, ci_high       95% percentile bootstrap interval of the estimate
        test, p_value         the difference test and its two-sided p-value
        p_holm                p_value after Holm's correction within the family
        equivalence_test      the TOST used; ``margin`` its margin in the estimate's units
        p_equivalence(_holm)  TOST p-value, raw and after Holm's correction
        verdict               "better", "equivalent", "inconclusive" or "not compared"
        winner                the better of a and b when the verdict is "better", else ""
        label                 the result in words, with the test and its Holm p-value
        seeds_for_power       seeds per cell for 80% power at the observed effect (inf: none)
        note                  why runs were left out, or why an interval has zero width
        ====================  =================================================================
    withheld
        Why comparisons were left out ("" when none was).
    settings
        Alpha, margins and the seed minimum used, for the report's notes.
    too_few_seeds
        True when every comparison was withheld for want of seeds (descriptive statistics only).
    """

    table: pd.DataFrame
    withheld: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    too_few_seeds: bool = False

    @property
    def empty(self) -> bool:
        return self.table.empty


@dataclass(frozen=True)
class _Pair:
    """One outcome's values in cells A and B; with ``paired`` they are aligned by seed.

    ``missing`` counts runs left out for having no value (NaN), ``unmatched`` runs left out of a
    paired comparison for having no run with the same seed in the other cell.
    """

    a: np.ndarray
    b: np.ndarray
    paired: bool
    missing: int = 0
    unmatched: int = 0

    @property
    def left_out(self) -> int:
        return self.missing + self.unmatched


def _seed_keys(frame: pd.DataFrame) -> list[str]:
    return [key for key in SEED_KEYS if key in frame.columns]


def _seed_tuples(cell: pd.DataFrame, keys: Sequence[str]) -> list[tuple[Any, ...]]:
    return list(zip(*(cell[key].tolist() for key in keys), strict=True))


def _pair(cell_a: pd.DataFrame, cell_b: pd.DataFrame,
          values: Callable[[pd.DataFrame], pd.Series], *, paired_only: bool) -> _Pair:
    """Match A and B by seed when they share every seed (or when ``paired_only``); drop NaN."""
    keys = _seed_keys(cell_a)
    value_a = values(cell_a).to_numpy(dtype=float)
    value_b = values(cell_b).to_numpy(dtype=float)
    seeds_a, seeds_b = _seed_tuples(cell_a, keys), _seed_tuples(cell_b, keys)
    position_b = {seed: i for i, seed in enumerate(seeds_b)}
    unique = len(set(seeds_a)) == len(seeds_a) and len(position_b) == len(seeds_b)
    matched = [(i, position_b[seed]) for i, seed in enumerate(seeds_a) if seed in position_b]
    if unique and (paired_only or len(matched) == len(seeds_a) == len(seeds_b)):
        ia = np.array([i for i, _ in matched], dtype=int)
        ib = np.array([j for _, j in matched], dtype=int)
        a, b = value_a[ia], value_b[ib]
        keep = ~(np.isnan(a) | np.isnan(b))
        return _Pair(a[keep], b[keep], True, missing=2 * int((~keep).sum()),
                     unmatched=len(seeds_a) + len(seeds_b) - 2 * len(matched))
    a, b = value_a[~np.isnan(value_a)], value_b[~np.isnan(value_b)]
    return _Pair(a, b, False, missing=len(value_a) + len(value_b) - len(a) - len(b))


def _loss_ranked(cell: pd.DataFrame) -> pd.Series:
    """Final validation loss for ranking: a diverged (non-finite) loss is the worst, +inf;
    a failed run has no loss (NaN) and is left out."""
    loss = pd.to_numeric(cell["final_val_loss"]).astype(float)
    loss = loss.where(np.isfinite(loss), np.inf)
    return loss.where(cell["status"].astype(str) != "failed", np.nan)


def _loss_finite(cell: pd.DataFrame) -> pd.Series:
    loss = pd.to_numeric(cell["final_val_loss"]).astype(float)
    return loss.where(np.isfinite(loss), np.nan)


@dataclass(frozen=True)
class _Outcome:
    """How one outcome is compared: values, estimand, tests, power and the words for it."""

    name: str
    values: Callable[[pd.DataFrame], pd.Series]
    estimand: str
    statistic: Callable[..., Any]
    summary: Callable[[np.ndarray], float]
    null: float
    higher_is_better: bool
    better: str
    shown: str
    margin_text: str
    number: str = ".2f"
    binary: bool = False
    bounded: bool = False  # values in [0, span]: rates (span 1), epochs (span = the budget)
    rank_based: bool = False


RATE = _Outcome(
    name="reached target", values=lambda c: reached(c).astype(float),
    estimand="rate difference ({a} - {b})", statistic=_mean_difference, summary=np.mean,
    null=0.0, higher_is_better=True, better="{w} reaches the target more often than {l}",
    shown="rates {va:.2f} vs {vb:.2f}", margin_text="±{m:g}", binary=True, bounded=True,
)
LOSS_RANKED = _Outcome(
    name="final val loss", values=_loss_ranked, estimand="P({a} lower)",
    statistic=prob_lower, summary=np.median, null=0.5, higher_is_better=True,
    better="{w} ends with a lower validation loss than {l}",
    shown="median loss {va:.3g} vs {vb:.3g}", margin_text="0.5 ± {m:g}", rank_based=True,
)
LOSS_MEAN = _Outcome(
    name="final val loss", values=_loss_finite, estimand="mean loss difference ({a} - {b})",
    statistic=_mean_difference, summary=np.mean, null=0.0, higher_is_better=False,
    better="{w} ends with a lower validation loss than {l}",
    shown="mean loss {va:.4g} vs {vb:.4g}", margin_text="±{m:g} nats", number=".2g",
)
EPOCHS = _Outcome(
    name="epochs to target", values=capped_epochs,
    estimand="restricted mean epochs difference ({a} - {b})", statistic=_mean_difference,
    summary=np.mean, null=0.0, higher_is_better=False,
    better="{w} reaches the target sooner than {l}",
    shown="restricted mean {va:.1f} vs {vb:.1f} epochs", margin_text="±{m:g} epochs", number=".1f",
    bounded=True,
)


def _estimate(pair: _Pair, outcome: _Outcome) -> float:
    return float(outcome.statistic(pair.a, pair.b))


def _difference_test(pair: _Pair, outcome: _Outcome) -> tuple[str, float]:
    """(test name, two-sided p) of "A and B differ" for this outcome and design."""
    if outcome.binary:
        if pair.paired:
            return "McNemar exact, paired by seed", mcnemar_pvalue(pair.a, pair.b)
        return "Fisher exact, unpaired", fisher_pvalue(pair.a, pair.b)
    if outcome.rank_based:
        return "Brunner-Munzel", brunner_munzel_pvalue(pair.a, pair.b)
    name = "paired t" if pair.paired else "Welch t"
    return name, mean_difference_pvalue(pair.a, pair.b, paired=pair.paired)


def _equivalence_test(pair: _Pair, outcome: _Outcome, margin: float,
                      replicates: np.ndarray | None, span: float) -> tuple[str, float]:
    """(test name, TOST p) of "A and B are within the margin" for this outcome and design."""
    if outcome.rank_based:
        if replicates is None:
            return "bootstrap TOST", math.nan
        p = bootstrap_tost_pvalue(replicates, outcome.null - margin, outcome.null + margin)
        return "bootstrap TOST", p
    name = "TOST on per-seed differences" if pair.paired else "Welch TOST"
    if outcome.bounded and _no_spread(pair, outcome):
        name = "exact binomial bound (no spread for a TOST)"
    p = tost_pvalue(pair.a, pair.b, margin, paired=pair.paired,
                    span=span if outcome.bounded else None)
    return name, p


def _seeds_needed(pair: _Pair, outcome: _Outcome, alpha: float) -> float:
    kind = "rate" if outcome.binary else "prob_lower" if outcome.rank_based else "mean"
    return power_seeds_needed(kind, pair.a, pair.b, paired=pair.paired, alpha=alpha)


def _note(pair: _Pair, outcome: _Outcome, margin: float, alpha: float, span: float) -> str:
    notes = []
    if pair.missing:
        why = ("failed, so no loss" if outcome is LOSS_RANKED
               else "no finite loss" if outcome is LOSS_MEAN else "no value")
        notes.append(f"{pair.missing // 2} seeds left out ({why} in one cell or both)"
                     if pair.paired else f"{pair.missing} runs left out ({why})")
    if pair.unmatched:
        notes.append(f"{pair.unmatched} runs without the same seed in the other cell left out")
    if _no_spread(pair, outcome):
        notes.append(_zero_spread_note(pair, outcome, margin / span, alpha))
    return "; ".join(notes)


def _no_spread(pair: _Pair, outcome: _Outcome) -> bool:
    """Whether the outcome leaves nothing to estimate a spread from (see :func:`_zero_spread`).

    Rank outcomes may hold +inf (diverged runs), where a per-seed difference is undefined; for
    them only a sample of one tied value counts.
    """
    if outcome.rank_based:
        return _constant(np.concatenate([pair.a, pair.b]))
    return _zero_spread(pair.a, pair.b, pair.paired)


def agreeing_seeds_needed(share: float, alpha: float) -> int:
    """Seeds that must all agree for the exact binomial bound to put the share that disagree
    below ``share`` (the margin over the outcome's range) at level ``alpha``: (1 - share)^n <=
    alpha."""
    return math.ceil(math.log(alpha) / math.log(1 - share))


def _zero_spread_note(pair: _Pair, outcome: _Outcome, share: float, alpha: float) -> str:
    """Why a zero-width interval is not the end of the story (``share``: margin / span)."""
    same = ("every seed gave the same difference" if pair.paired
            else "each cell gave one value for every seed")
    if outcome.bounded:
        return (f"{same}, so the bootstrap interval has zero width; equivalence uses an exact "
                f"binomial bound instead, which needs at least "
                f"{agreeing_seeds_needed(share, alpha)} agreeing seeds to show "
                f"a gap within the margin before Holm")
    return f"{same}, so the interval has zero width and the tests use the t limit"


def _compare(pair: _Pair, outcome: _Outcome, names: tuple[str, str], margin: float, *,
             alpha: float, n_boot: int, random_state: int, span: float = 1.0) -> dict[str, Any]:
    """One comparison row before Holm's correction and the verdict.

    ``span`` is the range of a bounded outcome's values (1 for rates, the budget for epochs).
    """
    if min(len(pair.a), len(pair.b)) < 2:
        return _not_compared(pair, outcome, names, margin)
    replicates = bootstrap_distribution((pair.a, pair.b), outcome.statistic,
                                        paired=pair.paired, n_boot=n_boot,
                                        random_state=random_state)
    low, high = _percentile_interval(replicates)
    test, p = _difference_test(pair, outcome)
    equivalence, p_eq = _equivalence_test(pair, outcome, margin, replicates, span)
    return {
        "outcome": outcome.name, "a": names[0], "b": names[1],
        "design": "paired" if pair.paired else "unpaired",
        "n_a": len(pair.a), "n_b": len(pair.b), "left_out": pair.left_out,
        "value_a": outcome.summary(pair.a), "value_b": outcome.summary(pair.b),
        "estimand": outcome.estimand.format(a=names[0], b=names[1]),
        "estimate": _estimate(pair, outcome),
        "ci_low": low, "ci_high": high, "test": test, "p_value": p,
        "equivalence_test": equivalence, "margin": margin, "p_equivalence": p_eq,
        "seeds_for_power": _seeds_needed(pair, outcome, alpha),
        "note": _note(pair, outcome, margin, alpha, span),
    }


def _not_compared(pair: _Pair, outcome: _Outcome, names: tuple[str, str],
                  margin: float) -> dict[str, Any]:
    """A row for a pair with fewer than two values on one side (every run failed, say)."""
    nan = math.nan
    return {
        "outcome": outcome.name, "a": names[0], "b": names[1],
        "design": "paired" if pair.paired else "unpaired",
        "n_a": len(pair.a), "n_b": len(pair.b), "left_out": pair.left_out,
        "value_a": nan, "value_b": nan,
        "estimand": outcome.estimand.format(a=names[0], b=names[1]), "estimate": nan,
        "ci_low": nan, "ci_high": nan, "test": "", "p_value": nan, "equivalence_test": "",
        "margin": margin, "p_equivalence": nan, "seeds_for_power": nan,
        "note": f"not compared: fewer than 2 values ({pair.left_out} runs without one)",
    }


# ---------------------------------------------------------------------------------------------
# Comparisons: verdicts and words


def format_p(p: float) -> str:
    """"p<0.001", "p=0.012", or "p n/a" for a missing p-value."""
    if not math.isfinite(p):
        return "p n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _verdict(p_holm: float, p_eq_holm: float, alpha: float) -> str:
    """equivalent (TOST), else better (difference test), else inconclusive; Holm-adjusted."""
    if not (math.isfinite(p_holm) or math.isfinite(p_eq_holm)):
        return "not compared"
    if math.isfinite(p_eq_holm) and p_eq_holm < alpha:
        return "equivalent"
    if math.isfinite(p_holm) and p_holm < alpha:
        return "better"
    return "inconclusive"


def _winner(row: Mapping[str, Any], outcome: _Outcome) -> str:
    """The better of A and B by the estimate's side of the null value (for a "better" verdict)."""
    above = row["estimate"] > outcome.null
    a_wins = above if outcome.higher_is_better else not above
    return str(row["a"] if a_wins else row["b"])


def _interval_text(row: Mapping[str, Any], number: str) -> str:
    return (f"{row['estimand']} {row['estimate']:{number}}, 95% interval "
            f"[{row['ci_low']:{number}}, {row['ci_high']:{number}}]")


def _label(row: Mapping[str, Any], outcome: _Outcome, alpha: float) -> str:
    """The result in words a reader understands, with the test and its Holm p-value."""
    if row["verdict"] == "not compared":
        return ""
    shown = outcome.shown.format(va=row["value_a"], vb=row["value_b"])
    margin = outcome.margin_text.format(m=row["margin"])
    interval = _interval_text(row, outcome.number)
    if row["verdict"] == "better":
        loser = row["b"] if row["winner"] == row["a"] else row["a"]
        claim = outcome.better.format(w=row["winner"], l=loser)
        return f"{claim}: {shown}, {interval} ({row['test']}, Holm {format_p(row['p_holm'])})"
    if row["verdict"] == "equivalent":
        also = ""
        if math.isfinite(row["p_holm"]) and row["p_holm"] < alpha:
            also = "; a difference is detected, but it is smaller than the margin"
        return (f"equivalent within {margin}: {shown}, {interval} ({row['equivalence_test']}, "
                f"Holm {format_p(row['p_equivalence_holm'])}){also}")
    return _inconclusive_label(row, outcome, margin, interval)


def _inconclusive_label(row: Mapping[str, Any], outcome: _Outcome, margin: str,
                        interval: str) -> str:
    """Say what the interval allows: both no difference and one as large as the margin, or else
    that neither test reached its threshold."""
    low, high, m, d = row["ci_low"], row["ci_high"], row["margin"], outcome.number
    tests = (f"difference Holm {format_p(row['p_holm'])}, "
             f"equivalence Holm {format_p(row['p_equivalence_holm'])}")
    none_inside = low <= outcome.null <= high
    gap_inside = low <= outcome.null - m or high >= outcome.null + m
    if none_inside and gap_inside:
        return (f"inconclusive: the 95% interval [{low:{d}}, {high:{d}}] of the "
                f"{row['estimand']} includes both a gap of {m:g} and none ({tests})")
    return (f"inconclusive: neither a difference nor equivalence within {margin} is shown; "
            f"{interval} ({tests})")


def _finish(rows: list[dict[str, Any]], outcomes: Mapping[str, _Outcome], table_name: str,
            keys: Sequence[str], alpha: float) -> pd.DataFrame:
    """Holm per family (table x outcome x kind of test), then verdicts, winners and labels."""
    table = pd.DataFrame(rows, columns=[*keys, *COMPARISON_COLUMNS])
    if table.empty:
        return table
    table["family"] = [f"{table_name}: {o}" for o in table["outcome"]]
    table["p_holm"] = np.nan
    table["p_equivalence_holm"] = np.nan
    for index in table.groupby("family", sort=False).groups.values():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"])
        table.loc[index, "p_equivalence_holm"] = holm(table.loc[index, "p_equivalence"])
    table["verdict"] = [
        _verdict(p, q, alpha)
        for p, q in zip(table["p_holm"], table["p_equivalence_holm"], strict=True)
    ]
    records = cast(list[dict[str, Any]], table.to_dict("records"))
    table["winner"] = [
        _winner(row, outcomes[row["outcome"]]) if row["verdict"] == "better" else ""
        for row in records
    ]
    table["label"] = [
        _with_note(_label(row | {"winner": winner}, outcomes[row["outcome"]], alpha), row["note"])
        for row, winner in zip(records, table["winner"], strict=True)
    ]
    return table


def _with_note(label: str, note: str) -> str:
    if not label:
        return note
    return f"{label}; note: {note}" if note else label


def _withheld_text(withheld: list[tuple[str, int]], total: int, min_seeds: int) -> str:
    """Why comparisons were withheld: all of them (the descriptive-only sentence) or some."""
    if not withheld:
        return ""
    fewest = min(n for _, n in withheld)
    if len(withheld) == total:
        return (DESCRIPTIVE_ONLY.format(min_seeds=min_seeds)
                + f" (The fewest seeds in a compared cell here: {fewest}.)")
    names = ", ".join(name for name, _ in withheld[:5]) + (", ..." if len(withheld) > 5 else "")
    return (f"{len(withheld)} of {total} comparisons withheld because a cell has fewer than "
            f"{min_seeds} seeds (fewest: {fewest}): {names}.")


def _settings(alpha: float, min_seeds: int, **margins: float) -> dict[str, Any]:
    return {"alpha": alpha, "min_seeds": min_seeds, "confidence": CONFIDENCE, "power": POWER,
            **margins}


def _group_name(keys: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in keys.items())


# ---------------------------------------------------------------------------------------------
# Comparisons: optimizers, frameworks, batch-size trend


def compare_optimizers(
    runs: pd.DataFrame,
    *,
    alpha: float = ALPHA,
    margin_rate: float = MARGIN_RATE,
    margin_prob: float = MARGIN_PROB,
    margin_epochs: float = MARGIN_EPOCHS,
    min_seeds: int = MIN_SEEDS_FOR_TESTS,
    n_boot: int = N_BOOT,
    random_state: int = 0,
) -> Comparison:
    """Every pair of optimizers within one framework, batch size, lr, hidden and epochs.

    Three outcomes per pair, each its own Holm family across the table:

    - reached target: rate difference A - B with a bootstrap interval; McNemar exact when the
      cells share every seed, else Fisher exact; TOST within ``margin_rate``.
    - final val loss: P(A lower) (ties half) with a bootstrap interval; Brunner-Munzel p
      (unpaired, so conservative when seeds are shared); equivalence when P is within
      0.5 +- ``margin_prob`` by :func:`bootstrap_tost_pvalue`, which keeps the pairing. Diverged
      runs rank as the worst loss, failed runs have none and are left out.
    - epochs to target: difference of restricted means of min(epochs to target, budget); paired
      or Welch t; TOST within ``margin_epochs`` x budget.

    Returns
    -------
    Comparison
        Table columns: the group keys (cell keys but ``optimizer``), then
        :data:`COMPARISON_COLUMNS`. ``seeds_for_power`` is the seeds per cell a difference of
        the observed size needs for 80% power (inf when there is none).
    """
    _require(runs, RUN_NEEDS, "runs")
    keys = [key for key in CELL_KEYS if key != "optimizer"]
    rows: list[dict[str, Any]] = []
    withheld: list[tuple[str, int]] = []
    total = 0
    for group, frame in _groups(runs, keys):
        cells = {str(name): cell for name, cell in frame.groupby("optimizer", sort=False)}
        for name_a, name_b in itertools.combinations(cells, 2):
            total += 1
            cell_a, cell_b = cells[name_a], cells[name_b]
            fewest = min(len(cell_a), len(cell_b))
            if fewest < min_seeds:
                withheld.append((f"{name_a} vs {name_b} ({_group_name(group)})", fewest))
                continue
            margins = {RATE.name: margin_rate, LOSS_RANKED.name: margin_prob,
                       EPOCHS.name: margin_epochs * float(group["epochs"])}
            for outcome in (RATE, LOSS_RANKED, EPOCHS):
                pair = _pair(cell_a, cell_b, outcome.values, paired_only=False)
                span = float(group["epochs"]) if outcome is EPOCHS else 1.0
                row = _compare(pair, outcome, (str(name_a), str(name_b)), margins[outcome.name],
                               alpha=alpha, n_boot=n_boot, random_state=random_state, span=span)
                rows.append({**group, **row})
    outcomes = {o.name: o for o in (RATE, LOSS_RANKED, EPOCHS)}
    table = _finish(rows, outcomes, "optimizers", keys, alpha)
    reason = _withheld_text(withheld, total, min_seeds)
    if total == 0:
        reason = "No two optimizers share a framework, batch size and the other axes."
    settings = _settings(alpha, min_seeds, margin_rate=margin_rate, margin_prob=margin_prob,
                         margin_epochs=margin_epochs)
    return Comparison(table, reason, settings, too_few_seeds=0 < total == len(withheld))


def compare_frameworks(
    runs: pd.DataFrame,
    *,
    alpha: float = ALPHA,
    margin_rate: float = MARGIN_RATE,
    margin_loss: float = MARGIN_LOSS,
    min_seeds: int = MIN_SEEDS_FOR_TESTS,
    n_boot: int = N_BOOT,
    random_state: int = 0,
) -> Comparison:
    """Each pair of frameworks per cell, paired by seed (same initial weights and batch order).

    Equivalence is the question, so each outcome gets a TOST on the per-seed differences:

    - reached target: rate difference, McNemar exact, TOST within ``margin_rate`` (with zero
      spread, the exact discordant-pair bound of :func:`bounded_tost_bound`);
    - final val loss: mean per-seed difference in nats, paired t, TOST within ``margin_loss``;
      seeds with a non-finite loss in either framework are left out (and counted).

    Only seeds run in both frameworks are used; a cell pair with fewer than ``min_seeds`` of them
    is withheld.

    Returns
    -------
    Comparison
        Table columns: the group keys (cell keys but ``framework``), then
        :data:`COMPARISON_COLUMNS`.
    """
    _require(runs, RUN_NEEDS, "runs")
    keys = [key for key in CELL_KEYS if key != "framework"]
    rows: list[dict[str, Any]] = []
    withheld: list[tuple[str, int]] = []
    total = 0
    for group, frame in _groups(runs, keys):
        cells = {str(name): cell for name, cell in frame.groupby("framework", sort=False)}
        for name_a, name_b in itertools.combinations(cells, 2):
            total += 1
            shared = _pair(cells[name_a], cells[name_b], RATE.values, paired_only=True)
            if len(shared.a) < min_seeds:
                withheld.append((f"{name_a} vs {name_b} ({_group_name(group)})", len(shared.a)))
                continue
            for outcome, margin in ((RATE, margin_rate), (LOSS_MEAN, margin_loss)):
                pair = _pair(cells[name_a], cells[name_b], outcome.values, paired_only=True)
                row = _compare(pair, outcome, (str(name_a), str(name_b)), margin,
                               alpha=alpha, n_boot=n_boot, random_state=random_state)
                rows.append({**group, **row})
    table = _finish(rows, {RATE.name: RATE, LOSS_MEAN.name: LOSS_MEAN}, "frameworks", keys, alpha)
    reason = _withheld_text(withheld, total, min_seeds)
    if total == 0:
        reason = "No cell was run in more than one framework."
    return Comparison(table, reason,
                      _settings(alpha, min_seeds, margin_rate=margin_rate, margin_loss=margin_loss),
                      too_few_seeds=0 < total == len(withheld))


def _trend_row(group: Mapping[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    """Spearman rho between log2 batch size and reaching the target, over the group's runs."""
    x = np.log2(frame["batch_size"].to_numpy(dtype=float))
    y = reached(frame).to_numpy(dtype=float)
    rates = frame.assign(_y=y).groupby("batch_size", sort=True)["_y"].mean()
    row: dict[str, Any] = {
        **group, "batch_sizes": ", ".join(str(int(b)) for b in rates.index),
        "rates": ", ".join(f"{r:.2f}" for r in rates), "n": len(frame),
    }
    if _constant(y):
        return {**row, "rho": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan, "seeds_for_power": math.nan}
    rho, p = sps.spearmanr(x, y)
    # Spearman's rho is Pearson's r on ranks; its interval is Fisher's z on those ranks.
    ci = sps.pearsonr(sps.rankdata(x), sps.rankdata(y)).confidence_interval(CONFIDENCE)
    per_cell = seeds_for_correlation(float(rho)) / len(rates)
    return {**row, "rho": float(rho), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p_value": float(p),
            "seeds_for_power": float(math.ceil(per_cell)) if math.isfinite(per_cell) else per_cell}


def _trend_label(row: Mapping[str, Any], alpha: float) -> tuple[str, str]:
    """(verdict, label) of one trend row."""
    who = f"{row['optimizer']} ({row['framework']})"
    if not math.isfinite(row["rho"]):
        every = "every" if float(row["rates"].split(", ")[0]) == 1.0 else "no"
        return "no variation", f"{who}: no trend can be estimated, {every} run reached the target"
    stats_text = (f"Spearman rho = {row['rho']:.2f}, 95% interval [{row['ci_low']:.2f}, "
                  f"{row['ci_high']:.2f}], between log2 batch size and reaching the target; "
                  f"Holm {format_p(row['p_holm'])}")
    if row["p_holm"] < alpha:
        direction = "less" if row["rho"] < 0 else "more"
        verdict = "decreasing" if row["rho"] < 0 else "increasing"
        return verdict, (f"{who} reaches the target {direction} often at larger batch sizes "
                         f"({stats_text})")
    return "inconclusive", f"inconclusive: no monotone trend shown for {who} ({stats_text})"


def batch_size_trend(
    runs: pd.DataFrame, *, alpha: float = ALPHA, min_seeds: int = MIN_SEEDS_FOR_TESTS
) -> Comparison:
    """Trend of the reached-target rate over batch size, per framework x optimizer x other axes.

    The statistic is Spearman's rho between log2(batch size) and each run's reached flag (0/1),
    over every run of the group's batch sizes, with a Fisher-z 95% interval and scipy's
    p-value; Holm across groups. Rho < 0 means larger batches reach the target less often.
    Seeds are shared across batch sizes but the test treats runs as independent. Only cells
    with at least ``min_seeds`` seeds take part, and a group needs two batch sizes.

    Returns
    -------
    Comparison
        Table columns: the group keys (cell keys but ``batch_size``), then
        :data:`TREND_COLUMNS`; ``seeds_for_power`` is per batch-size cell.
    """
    _require(runs, RUN_NEEDS, "runs")
    keys = [key for key in CELL_KEYS if key != "batch_size"]
    rows: list[dict[str, Any]] = []
    withheld: list[tuple[str, int]] = []
    total = 0
    for group, frame in _groups(runs, keys):
        sizes = frame.groupby("batch_size").size()
        if len(sizes) < 2:
            continue
        total += 1
        if sizes.min() < min_seeds:
            withheld.append((_group_name(group), int(sizes.min())))
            continue
        rows.append(_trend_row(group, frame))
    table = pd.DataFrame(rows, columns=[*keys, *TREND_COLUMNS])
    if not table.empty:
        table["p_holm"] = holm(table["p_value"])
        records = cast(list[dict[str, Any]], table.to_dict("records"))
        labels = [_trend_label(row, alpha) for row in records]
        table["verdict"], table["label"] = [v for v, _ in labels], [t for _, t in labels]
    reason = _withheld_text(withheld, total, min_seeds)
    if total == 0:
        reason = "No optimizer was run at more than one batch size."
    return Comparison(table, reason, _settings(alpha, min_seeds),
                      too_few_seeds=0 < total == len(withheld))


# ---------------------------------------------------------------------------------------------
# Variance split for a factorial seed design


VARIANCE_OUTCOMES: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "reached target": lambda c: reached(c).astype(float),
    "final val acc": lambda c: pd.to_numeric(c["final_val_acc"]).astype(float),
    "final val loss": _loss_finite,
    "epochs to target": capped_epochs,
}


def two_way_anova(y: np.ndarray) -> pd.DataFrame:
    """Two-way ANOVA without replication of a complete table y, shape (n_init, n_order).

    Rows "init seed", "order seed", "rest" (interaction and everything else); columns df, ss,
    ms, f, p_value (F tests against "rest"), variance (method-of-moments variance components
    from the expected mean squares, truncated at 0), share (of the components' sum) and
    ss_share (of the total sum of squares). Shares are NaN when the outcome has no variance.
    """
    rows, cols = y.shape
    # A constant outcome has no variance at all; the mean's rounding must not invent some.
    y = np.zeros_like(y) if _constant(y.ravel()) else y
    grand = y.mean()
    ss_init = cols * float(np.sum((y.mean(axis=1) - grand) ** 2))
    ss_order = rows * float(np.sum((y.mean(axis=0) - grand) ** 2))
    ss_total = float(np.sum((y - grand) ** 2))
    ss_rest = max(ss_total - ss_init - ss_order, 0.0)
    df = np.array([rows - 1, cols - 1, (rows - 1) * (cols - 1)], dtype=float)
    ss = np.array([ss_init, ss_order, ss_rest])
    ms = ss / df
    f, p = _f_tests(ms, df)
    variance = np.array([max((ms[0] - ms[2]) / cols, 0.0), max((ms[1] - ms[2]) / rows, 0.0),
                         ms[2]])
    total_variance = variance.sum()
    share = variance / total_variance if total_variance > 0 else np.full(3, np.nan)
    ss_share = ss / ss_total if ss_total > 0 else np.full(3, np.nan)
    return pd.DataFrame(
        {"df": df, "ss": ss, "ms": ms, "f": f, "p_value": p, "variance": variance,
         "share": share, "ss_share": ss_share},
        index=pd.Index(VARIANCE_SOURCES, name="source"),
    )


def _f_tests(ms: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F = MS / MS_rest and its p-value for init and order; NaN for rest or when undefined."""
    f, p = np.full(3, np.nan), np.full(3, np.nan)
    if ms[2] > 0:
        f[:2] = ms[:2] / ms[2]
        p[:2] = sps.f.sf(f[:2], df[:2], df[2])
    return f, p


def _factorial_table(cell: pd.DataFrame, values: pd.Series) -> tuple[np.ndarray | None, str]:
    """The cell's outcome as an (init x order) table, or None and why it cannot be split."""
    frame = cell[["init_index", "order_index"]].assign(y=values.to_numpy(dtype=float))
    if frame.duplicated(["init_index", "order_index"]).any():
        return None, "more than one run per (init seed, order seed): not a k x k design"
    table = frame.pivot(index="init_index", columns="order_index", values="y")
    if table.shape[0] < 2 or table.shape[1] < 2:
        return None, "needs at least 2 init seeds and 2 order seeds"
    if table.isna().to_numpy().any():
        return None, "some runs have no value (failed or non-finite): the design is incomplete"
    return table.to_numpy(), ""


def is_factorial(runs: pd.DataFrame) -> bool:
    """Whether ``runs`` crosses init seeds with order seeds (the independent design pairs them)."""
    if not {"init_index", "order_index"} <= set(runs.columns) or runs.empty:
        return False
    orders_per_init = runs.groupby([*CELL_KEYS, "init_index"])["order_index"].nunique()
    return bool((orders_per_init > 1).any())


def independent_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that are independent seeds: all of them, or a factorial design's diagonal.

    In a factorial design, runs that share an init seed share their initial weights, so they
    are not independent seeds and a test counting them as such would be overconfident. The
    diagonal (init index = order index) is one independent seed per init seed.
    """
    if not is_factorial(runs):
        return runs
    return runs[runs["init_index"] == runs["order_index"]]


def variance_split(
    runs: pd.DataFrame, outcomes: Sequence[str] = tuple(VARIANCE_OUTCOMES)
) -> pd.DataFrame:
    """Split each cell's outcome variance into init seed, order seed and the rest.

    For a factorial seed design: every cell runs k init seeds x k order seeds, one run each,
    identified by the columns ``init_index`` and ``order_index``. Each outcome is analysed by
    :func:`two_way_anova` (additive two-way ANOVA without replication; "rest" holds the
    init x order interaction and any other noise).

    Parameters
    ----------
    outcomes
        Names among :data:`VARIANCE_OUTCOMES`.

    Returns
    -------
    DataFrame
        The cell keys, then :data:`VARIANCE_COLUMNS`; three rows (sources) per cell and outcome.
        A cell that is not a complete design has NaN numbers and its reason in ``note``.
    """
    _require(runs, [*RUN_NEEDS, "init_index", "order_index"], "runs")
    unknown = [name for name in outcomes if name not in VARIANCE_OUTCOMES]
    if unknown:
        raise ValueError(f"outcomes must be among {', '.join(VARIANCE_OUTCOMES)}; "
                         f"received {', '.join(map(repr, unknown))}")
    frames = []
    for keys, cell in _groups(runs, CELL_KEYS):
        for name in outcomes:
            frames.append(_split_one(keys, cell, name))
    columns = [*CELL_KEYS, *VARIANCE_COLUMNS]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)


def _split_one(keys: Mapping[str, Any], cell: pd.DataFrame, outcome: str) -> pd.DataFrame:
    y, why = _factorial_table(cell, VARIANCE_OUTCOMES[outcome](cell))
    if y is None:
        logger.info("variance split of %s, %s skipped: %s", _group_name(keys), outcome, why)
        anova = pd.DataFrame(np.nan, index=pd.Index(VARIANCE_SOURCES, name="source"),
                             columns=["df", "ss", "ms", "f", "p_value", "variance", "share",
                                      "ss_share"])
        shape = (cell["init_index"].nunique(), cell["order_index"].nunique())
    else:
        anova, shape = two_way_anova(y), y.shape
        why = "" if np.nansum(anova["ss"]) > 0 else "no variance: every run has the same value"
    frame = anova.reset_index().assign(outcome=outcome, n_init=shape[0], n_order=shape[1],
                                       note=why)
    return frame.assign(**keys)


# ---------------------------------------------------------------------------------------------
# Everything at once, and the results directory


@dataclass(frozen=True)
class StatsTables:
    """Every table of the seed-variance analysis of one results directory."""

    summary: pd.DataFrame
    reached_curve: pd.DataFrame
    optimizers: Comparison
    frameworks: Comparison
    trend: Comparison
    variance: pd.DataFrame | None
    settings: dict[str, Any] = field(default_factory=dict)


def compute_tables(
    runs: pd.DataFrame,
    weights: pd.DataFrame | None = None,
    x_train: np.ndarray | Mapping[int, np.ndarray] | None = None,
    *,
    n_boot: int = N_BOOT,
    random_state: int = 0,
    min_seeds: int = MIN_SEEDS_FOR_TESTS,
    alpha: float = ALPHA,
    margin_rate: float = MARGIN_RATE,
    margin_loss: float = MARGIN_LOSS,
    margin_prob: float = MARGIN_PROB,
    margin_epochs: float = MARGIN_EPOCHS,
) -> StatsTables:
    """Summary, reached curve, comparisons and (for a factorial design) the variance split.

    When ``runs`` crosses init and order seeds (a factorial design: some ``init_index`` is run
    with more than one ``order_index``), the variance split uses every run and everything else
    only the runs whose init and order index agree, which are independent seeds; ``settings``
    then says ``factorial_subset: diagonal``. The options are those of the functions called.
    """
    boot: dict[str, Any] = {"n_boot": n_boot, "random_state": random_state}
    tests: dict[str, Any] = {"alpha": alpha, "min_seeds": min_seeds}
    every_run, runs = runs, independent_runs(runs)
    design = {"factorial_subset": "diagonal"} if len(runs) < len(every_run) else {}
    return StatsTables(
        summary=cell_summary(runs, weights, x_train, **boot),
        reached_curve=reached_by_epoch(runs),
        optimizers=compare_optimizers(runs, margin_rate=margin_rate, margin_prob=margin_prob,
                                      margin_epochs=margin_epochs, **tests, **boot),
        frameworks=compare_frameworks(runs, margin_rate=margin_rate, margin_loss=margin_loss,
                                      **tests, **boot),
        trend=batch_size_trend(runs, **tests),
        variance=variance_split(every_run) if design else None,
        settings={**tests, **boot, **design, "margin_rate": margin_rate,
                  "margin_loss": margin_loss,
                  "margin_prob": margin_prob, "margin_epochs": margin_epochs,
                  "stuck_tolerance": STUCK_TOLERANCE},
    )


def load_inputs(
    results_dir: Path,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[int, np.ndarray] | None]:
    """(runs, weights, training inputs by data seed) of a results directory.

    The inputs are drawn again from each run's ``data_seed`` with :func:`xorbench.data.make_xor`
    (the runner's data); weights and inputs are None when the weights table is missing.
    """
    path = Path(results_dir)
    runs = results.read_runs(path)
    if not (path / results.WEIGHTS).is_file():
        logger.warning("%s has no %s; dead first layers are not counted", path, results.WEIGHTS)
        return runs, None, None
    experiment = results.read_manifest(path).get("experiment") or {}
    n_train = int(experiment.get("n_train", N_TRAIN))
    return runs, results.read_weights(path), training_inputs(runs, n_train)


def training_inputs(runs: pd.DataFrame, n_train: int = N_TRAIN) -> dict[int, np.ndarray]:
    """The training inputs of every data seed in ``runs``, drawn again as the runner drew them."""
    return {int(seed): make_xor(int(seed), n_train=n_train).x_train
            for seed in runs["data_seed"].dropna().unique()}


def tables_from_dir(results_dir: Path, **options: Any) -> StatsTables:
    """:func:`compute_tables` of a results directory (options are passed on)."""
    runs, weights, inputs = load_inputs(Path(results_dir))
    return compute_tables(runs, weights, inputs, **options)


def write_summary(results_dir: Path, summary: pd.DataFrame | None = None, **options: Any) -> Path:
    """Write ``RESULTS/summary.parquet`` (the :func:`cell_summary` table) atomically.

    ``epochs_median`` is inf for "not reached"; ``dead_first_layer`` is nullable.
    """
    path = Path(results_dir)
    if summary is None:
        runs, weights, inputs = load_inputs(path)
        summary = cell_summary(independent_runs(runs), weights, inputs, **options)
    results.write_atomic(summary, path / SUMMARY)
    logger.info("wrote %s", path / SUMMARY)
    return path / SUMMARY
