"""The benchmark harness (bench/_harness.py): pairing, interleaving, the docs sections.

The figures in docs/benchmarks.md are only as good as this arithmetic, so it is
tested like library code, with variants whose timings are known exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _harness import Comparison, Sample, Target, Variant, write_section


def _variants(calls: list[tuple[int, str]]) -> list[Variant]:
    # The machine gets slower every round (wall = round + 1), and the library is
    # always exactly twice as fast as the baseline in the same round.
    def baseline(round_no: int) -> Sample:
        calls.append((round_no, "base"))
        return Sample(ops=100, wall=round_no + 1.0, cpu={"process": 0.01 * (round_no + 1)})

    def library(round_no: int) -> Sample:
        calls.append((round_no, "lib"))
        return Sample(ops=100, wall=(round_no + 1.0) / 2, cpu={"process": 0.004 * (round_no + 1)})

    return [
        Variant("library", library, guarantee="g1", short="lib"),
        Variant("hand-written", baseline, guarantee="g2", baseline=True, short="base"),
    ]


def test_ratios_are_paired_per_round_so_drift_cancels() -> None:
    calls: list[tuple[int, str]] = []
    result = Comparison("t", _variants(calls), rounds=5, cpu_scopes={"process": "p"}).run()
    assert result.ratios("library", "hand-written") == pytest.approx([2.0] * 5)
    assert result.ratios("library", "hand-written", "process") == pytest.approx([0.4] * 5)
    # The absolute rates drift fivefold; the paired ratio does not move at all.
    rates = result.wall("hand-written")
    assert max(rates) / min(rates) == pytest.approx(5.0)
    met, stats = result.check(Target("x", "library", "hand-written", at_least=1.5))
    assert met
    assert (stats.low, stats.median, stats.high) == pytest.approx((2.0, 2.0, 2.0))
    assert not result.check(Target("x", "library", "hand-written", at_least=2.5))[0]
    assert result.check(Target("c", "library", "hand-written", at_most=0.75, of="process"))[0]


def test_rounds_interleave_with_a_rotating_order() -> None:
    calls: list[tuple[int, str]] = []
    Comparison("t", _variants(calls), rounds=5).run()
    assert calls == [
        (0, "lib"), (0, "base"), (1, "base"), (1, "lib"), (2, "lib"), (2, "base"),
        (3, "base"), (3, "lib"), (4, "lib"), (4, "base"),
    ]  # fmt: skip


def test_fewer_than_five_rounds_or_no_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        Comparison("t", _variants([]), rounds=4)
    with pytest.raises(ValueError, match="baseline"):
        Comparison("t", [v for v in _variants([]) if not v.baseline])


def test_the_table_shows_medians_ranges_ratios_and_targets() -> None:
    result = Comparison("t", _variants([]), rounds=5, cpu_scopes={"process": "all threads"}).run()
    table = result.markdown(targets=[Target("library vs base", "library", "hand-written", 1.5)])
    row = (
        "| library | g1 | 66.7 [40.0-200.0] | 2.00x [2.00-2.00] | 120 [40-200] | 0.40x [0.40-0.40]"
    )
    assert row + " |" in table
    assert "**hand-written**" in table
    assert "5 interleaved rounds" in table
    assert "*process*: all threads" in table
    assert "library vs base: ≥ 1.5x: **2.00x** [2.00-2.00]: met" in table


def test_a_section_replaces_only_itself(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nProse before.\n", encoding="utf-8")
    write_section("one", "first figures\n", docs)
    write_section("two", "other figures\n", docs)
    text = docs.read_text(encoding="utf-8")
    docs.write_text(
        text.replace("other figures", "other figures\n\nProse after."), encoding="utf-8"
    )
    write_section("one", "second figures\n", docs)
    text = docs.read_text(encoding="utf-8")
    assert "first figures" not in text
    assert text.index("Prose before.") < text.index("second figures") < text.index("other figures")
    assert "Prose after." in text
    assert text.count("<!-- bench:one begin") == 1
    assert text.count("<!-- bench:one end -->") == 1


def test_the_noisy_neighbour_measures_sharing_only_while_b_has_a_backlog():
    import bench_scheduler

    # B's third send returned late (held up on the sender's side): B had nothing
    # waiting between its second arrival and that send, so A's deliveries then
    # say nothing about sharing.
    sent = [0.0, 0.0, 5.0]
    arrived = [0.5, 1.0, 5.5]
    intervals = bench_scheduler.backlog_intervals(sent, arrived)
    assert intervals == [(0.0, 1.0), (5.0, 5.5)]
    a_arrivals = [0.2, 0.7, 3.0, 4.0, 5.2]
    assert bench_scheduler.count_in(a_arrivals, intervals) == 3
    assert bench_scheduler.count_in(arrived, intervals) == 3
    assert bench_scheduler.jain([2.0, 2.0]) == 1.0
    assert bench_scheduler.jain([1.0, 0.0]) == 0.5
