"""bench.stats and bench.results on known data: intervals, verdicts, sample sizes, files."""

from __future__ import annotations

import json
import math
import random

import pytest

from bench import results, stats


def test_log_t_interval_matches_a_hand_computation() -> None:
    ratios = [0.9, 1.0, 1.1, 1.05, 0.95]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, 4)
    low, high = stats.log_t_interval(ratios)
    assert low == pytest.approx(math.exp(mean - half))
    assert high == pytest.approx(math.exp(mean + half))
    assert low < stats.geometric_mean(ratios) < high


def test_interval_covers_the_true_ratio_about_95_percent_of_the_time() -> None:
    rng = random.Random(1)
    true_ratio, trials, covered = 0.93, 400, 0
    for _ in range(trials):
        ratios = [true_ratio * math.exp(rng.gauss(0, 0.08)) for _ in range(6)]
        low, high = stats.log_t_interval(ratios)
        covered += low <= true_ratio <= high
    assert 0.91 <= covered / trials <= 0.99


def test_bootstrap_interval_is_seeded_and_contains_the_estimate() -> None:
    ratios = [0.97, 1.02, 0.99, 1.04, 0.96, 1.01]
    first, again = stats.bootstrap_interval(ratios), stats.bootstrap_interval(ratios)
    assert first == again
    assert first[0] < stats.geometric_mean(ratios) < first[1]


@pytest.mark.parametrize(
    ("interval", "target", "direction", "expected"),
    [
        ((0.98, 1.02), 0.95, "higher", "met"),
        ((0.80, 0.90), 0.95, "higher", "missed"),
        ((0.90, 1.00), 0.95, "higher", "inconclusive"),
        ((0.90, 1.00), 1.01, "lower", "met"),
        ((1.02, 1.10), 1.01, "lower", "missed"),
        ((0.99, 1.03), 1.01, "lower", "inconclusive"),
        ((math.nan, math.nan), 1.0, "lower", "inconclusive"),
    ],
)
def test_verdict_on_every_side(interval, target, direction, expected) -> None:
    assert stats.verdict(interval, target, direction) == expected


def test_verdict_rejects_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        stats.verdict((0.9, 1.1), 1.0, "up")  # type: ignore[arg-type]


def test_aa_control_is_centred_on_one() -> None:
    rng = random.Random(7)
    first = [10 * math.exp(rng.gauss(0, 0.05)) for _ in range(12)]
    second = [10 * math.exp(rng.gauss(0, 0.05)) for _ in range(12)]
    comp = stats.compare(
        "x", first, second, target=0.95, direction="higher", control=(second, first), what="t"
    )
    low, high = comp["aa"]["interval"]
    assert low < 1.0 < high
    assert comp["aa"]["value"] == pytest.approx(1 / comp["value"])


def test_compare_says_inconclusive_when_the_noise_straddles_the_target() -> None:
    # The per-epoch ratios of the old item 1 (0.77-1.16): their median "met" 0.97.
    ours = [0.9507, 1.1641, 0.7729, 1.0332, 0.8572, 1.1563]
    comp = stats.compare(
        "1", ours, [1.0] * 6, target=0.97, direction="higher", control=None, what="t"
    )
    assert comp["verdict"] == "inconclusive"
    assert comp["reps_needed_for_half_width_0.03"] > 6


def test_paired_ratios_need_equal_lengths_and_positive_values() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        stats.paired_ratios([1.0, 0.0], [1.0, 1.0])


def test_reps_needed_reaches_the_half_width() -> None:
    rng = random.Random(3)
    pilot = [math.exp(rng.gauss(0, 0.1)) for _ in range(8)]
    n = stats.reps_needed(pilot)
    spread = math.log(max(pilot)) - math.log(min(pilot))
    assert n is not None and n > 8 and spread > 0
    centre = stats.geometric_mean(pilot)
    sd = __import__("statistics").stdev(math.log(r) for r in pilot)

    def upper_half(k: int) -> float:
        return centre * (math.exp(stats.t_quantile(0.975, k - 1) * sd / math.sqrt(k)) - 1)

    assert upper_half(n) <= 0.03 < upper_half(n - 1)
    assert stats.reps_needed([1.0]) is None
    quieter = stats.reps_needed([1 + (r - 1) / 4 for r in pilot])
    assert quieter is not None and quieter < n


def test_saved_result_round_trips_and_malformed_ones_are_refused(tmp_path) -> None:
    run = results.Run("unit", {"reps": 3})
    comp = stats.compare(
        "u",
        [1.0, 1.1, 0.9],
        [1.0, 1.0, 1.0],
        target=0.5,
        direction="higher",
        control=([1.0, 1.0, 1.1], [1.0, 1.05, 1.0]),
        what="t",
    )
    path = run.save({"a": [1.0, 1.1, 0.9]}, [comp], directory=str(tmp_path))
    assert path.name.startswith("unit-") and path.suffix == ".json"
    doc = results.load(path)
    assert doc["comparisons"][0]["verdict"] == "met"
    assert results.newest(tmp_path)["unit"]["_path"] == str(path)

    broken = json.loads(path.read_text())
    broken["comparisons"][0]["value"] = 5.0  # outside its own interval
    (tmp_path / "unit-29990101T000000Z.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="outside its interval"):
        results.newest(tmp_path)
    with pytest.raises(ValueError, match="no comparisons"):
        run.save({}, [], directory=str(tmp_path))


def test_absolute_values_get_an_interval_and_no_aa(tmp_path) -> None:
    comp = stats.value_against_target(
        "tick", [0.05, 0.06, 0.055], target=1.0, direction="lower", unit="s", what="t"
    )
    assert comp["verdict"] == "met" and comp["aa"] is None
    assert "A/A" not in results.summary_line(comp)
    path = results.Run("absolute", {}).save({}, [comp], directory=str(tmp_path))
    assert results.load(path)["comparisons"][0]["unit"] == "s"


def test_a_single_pair_saves_strict_json_without_an_interval(tmp_path) -> None:
    comp = stats.compare(
        "one", [1.0], [2.0], target=1.0, direction="lower", control=([1.0], [1.1]), what="t"
    )
    assert comp["verdict"] == "inconclusive"
    path = results.Run("single", {}).save({}, [comp], directory=str(tmp_path))
    text = path.read_text()
    assert "NaN" not in text
    assert json.loads(text)["comparisons"][0]["interval"] == [None, None]
    assert "no interval" in results.summary_line(results.load(path)["comparisons"][0])


def test_at_five_pairs_the_bootstrap_undercovers_and_the_t_interval_does_not() -> None:
    """Why the verdict uses the t-interval (bench/stats.py's docstring)."""
    rng = random.Random(5)
    trials, boot, t = 200, 0, 0
    for _ in range(trials):
        ratios = [math.exp(rng.gauss(0, 0.1)) for _ in range(5)]
        low, high = stats.bootstrap_interval(ratios, resamples=1000)
        boot += low <= 1.0 <= high
        low, high = stats.log_t_interval(ratios)
        t += low <= 1.0 <= high
    assert boot / trials < 0.90 < t / trials
