"""Statistics for the benchmarks: paired ratios, their 95% intervals, verdicts, sample sizes.

Every comparison is paired: repetition i of side A ran next to repetition i of side B (same
round, seconds apart), so the unit of analysis is the per-pair ratio r_i = A_i / B_i.

The reported ratio is the geometric mean of the r_i and its interval a t-interval on
log r_i: exp(mean(log r) +- t(0.975, n-1) * sd(log r) / sqrt(n)). Why this and not the
bootstrap: with the 3-20 pairs a shared machine affords, a percentile bootstrap interval is
too narrow (it cannot be wider than the spread of the resamples: with n = 5 lognormal
ratios it covers the truth about 82% of the time in a simulation, the t-interval 95%; see
tests/bench/test_stats.py), while the t-interval on logs is exact for lognormal
noise (timings are positive and their noise is multiplicative) and honest about small n.
The paired bootstrap (fixed seed, geometric mean of resampled ratios) is computed too and
saved beside it as a cross-check; the verdict uses the t-interval.

Verdict against a target: `met` when the whole interval clears it, `missed` when the whole
interval lies on the wrong side, `inconclusive` when it straddles the target (or when
there are fewer than 2 pairs, so no interval).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

LEVEL = 0.95
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000
TARGET_HALF_WIDTH = 0.03  # the half-width a target 3-5% from 1.0 needs to be resolved
Direction = Literal["higher", "lower"]  # which side of the target is good
VERDICTS = ("met", "missed", "inconclusive")


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-pair ratios; both sides must have one positive value per repetition."""
    if len(numerator) != len(denominator):
        raise ValueError(
            f"paired sides differ in length: {len(numerator)} vs {len(denominator)}; "
            "every repetition needs both sides"
        )
    values = [*numerator, *denominator]
    if any(not (v > 0 and math.isfinite(v)) for v in values):
        raise ValueError(f"ratios need finite values > 0, got {values}")
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log v)); the centre of a log-scale interval."""
    return math.exp(statistics.fmean(math.log(v) for v in values))


def log_t_interval(ratios: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The t-interval of the geometric mean of `ratios` (NaNs with fewer than 2)."""
    if len(ratios) < 2:
        return math.nan, math.nan
    logs = [math.log(r) for r in ratios]
    centre = statistics.fmean(logs)
    spread = statistics.stdev(logs) / math.sqrt(len(logs))
    half = t_quantile(0.5 + level / 2, len(logs) - 1) * spread
    return math.exp(centre - half), math.exp(centre + half)


def bootstrap_interval(
    ratios: Sequence[float],
    level: float = LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile interval of the geometric mean over paired resamples (fixed seed)."""
    if len(ratios) < 2:
        return math.nan, math.nan
    rng = random.Random(seed)
    logs = [math.log(r) for r in ratios]
    means = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(resamples))
    low = means[int((1 - level) / 2 * resamples)]
    high = means[min(int((1 + level) / 2 * resamples), resamples - 1)]
    return math.exp(low), math.exp(high)


def verdict(interval: tuple[float, float], target: float, direction: Direction) -> str:
    """`met`, `missed` or `inconclusive` for an interval against a target."""
    low, high = interval
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction {direction!r}: allowed 'higher', 'lower'")
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    good, bad = (
        (low >= target, high < target)
        if direction == "higher"
        else (
            high <= target,
            low > target,
        )
    )
    return "met" if good else "missed" if bad else "inconclusive"


def reps_needed(
    pilot: Sequence[float], half_width: float = TARGET_HALF_WIDTH, level: float = LEVEL
) -> int | None:
    """Pairs needed for the interval's wider (upper) half to be <= `half_width`, assuming
    the pilot's spread of log ratios; None when the pilot has fewer than 2 pairs."""
    if len(pilot) < 2:
        return None
    centre = geometric_mean(pilot)
    spread = statistics.stdev(math.log(r) for r in pilot)
    if spread == 0:
        return 2
    n = 2
    while centre * (math.exp(t_quantile(0.5 + level / 2, n - 1) * spread / math.sqrt(n)) - 1) > (
        half_width
    ):
        n += 1 if n < 100 else n // 10
        if n > 1_000_000:
            break
    return n


@dataclass
class Estimate:
    """A geometric-mean ratio (or value) with its 95% intervals, from n pairs."""

    value: float
    interval: tuple[float, float]
    bootstrap_interval: tuple[float, float]
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate(values: Sequence[float]) -> Estimate:
    """Geometric mean, t-interval on logs and bootstrap interval of positive values."""
    return Estimate(
        value=geometric_mean(values),
        interval=log_t_interval(values),
        bootstrap_interval=bootstrap_interval(values),
        n=len(values),
    )


def compare(
    item: str,
    numerator: Sequence[float],
    denominator: Sequence[float],
    *,
    target: float | None,
    direction: Direction,
    control: tuple[Sequence[float], Sequence[float]] | None,
    what: str,
) -> dict[str, Any]:
    """A paired comparison as saved in a result file: ratio numerator/denominator with its
    interval and verdict, and the A/A control (the same side run twice, its second run over
    its first) with its interval, which should straddle 1.0."""
    ratios = paired_ratios(numerator, denominator)
    main = estimate(ratios)
    result: dict[str, Any] = {
        "item": item,
        "what": what,
        "target": target,
        "direction": direction,
        "ratios": ratios,
        **main.to_json(),
        "verdict": "no target" if target is None else verdict(main.interval, target, direction),
        "reps_needed_for_half_width_0.03": reps_needed(ratios),
    }
    if control is not None:
        aa = paired_ratios(*control)
        result["aa"] = {"ratios": aa, **estimate(aa).to_json()}
    else:
        result["aa"] = None
    return result


def value_against_target(
    item: str,
    values: Sequence[float],
    *,
    target: float | None,
    direction: Direction,
    unit: str,
    what: str,
) -> dict[str, Any]:
    """An absolute measurement (seconds, a share) with its interval and verdict; no A/A:
    there is no second side to repeat."""
    est = estimate(values)
    return {
        "item": item,
        "what": what,
        "unit": unit,
        "target": target,
        "direction": direction,
        "values": list(values),
        **est.to_json(),
        "verdict": "no target" if target is None else verdict(est.interval, target, direction),
        "aa": None,
    }
