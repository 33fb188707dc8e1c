"""pixpro.stats against statistical tables and values worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pixpro.stats import Summary, format_summary, paired_differences, paired_summary, summarize, t_quantile, verdict

T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (tables)


@pytest.mark.parametrize("df, expected", [(1, 12.706204736174698), (2, T_975_DF2), (3, 3.182446305284263),
                                          (10, 2.2281388519649385), (30, 2.0422724563012373),
                                          (1000, 1.9623390808264078), (1e7, 1.959964)])
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, rel=1e-6)


def test_t_quantile_rejects_impossible_arguments():
    with pytest.raises(ValueError, match="needs 0 < p < 1 and df > 0"):
        t_quantile(1.0, 3)


def test_summarize_three_values_by_hand():
    summary = summarize([1.0, 2.0, 3.0])
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # std (ddof 1) of 1, 2, 3 is 1
    assert summary.n == 3 and summary.mean == pytest.approx(2.0) and summary.std == pytest.approx(1.0)
    assert summary.low == pytest.approx(2.0 - half) and summary.high == pytest.approx(2.0 + half)


def test_summarize_one_value_has_no_spread_and_none_has_no_mean():
    one = summarize([0.4])
    assert one.n == 1 and one.mean == 0.4 and math.isnan(one.std) and math.isnan(one.low) and math.isnan(one.high)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)
    assert summarize([0.4, float("nan")]).n == 1  # a missing score is left out, not counted as 0


def test_paired_differences_use_the_shared_seeds_and_average_repeats():
    ours = pd.Series([0.15, 0.17, 0.17, 0.90], index=[1, 2, 2, 3])  # seed 2 twice, seed 3 unpaired
    theirs = pd.Series([0.10, 0.11, 0.09], index=[0, 1, 2])
    differences = paired_differences(ours, theirs)
    assert differences.index.tolist() == [1, 2]
    assert differences.tolist() == pytest.approx([0.04, 0.08])
    summary = paired_summary(ours, theirs)
    std = math.sqrt(2) * 0.02  # of 0.04 and 0.08
    assert summary.n == 2 and summary.mean == pytest.approx(0.06) and summary.std == pytest.approx(std)
    assert summary.low == pytest.approx(0.06 - 12.706204736174698 * std / math.sqrt(2))


def test_verdict_needs_an_interval_that_excludes_zero():
    assert verdict(summarize([0.04, 0.05, 0.06])) == "better"  # 0.05 ± 0.025
    assert verdict(summarize([-0.04, -0.05, -0.06])) == "worse"
    assert verdict(summarize([0.01, 0.02, 0.03])) == "unclear"  # 0.02 ± 0.025
    assert verdict(summarize([0.5])) == "unclear"  # one shared seed: no interval


def test_format_summary_in_points():
    assert format_summary(Summary(3, 0.1745, 0.004, 0.1645, 0.1845)) == "17.45 ± 0.40 [16.45, 18.45]"
    assert format_summary(Summary(3, 0.01, 0.02, -0.04, 0.06), sign=True, digits=1) == "+1.0 ± 2.0 [-4.0, +6.0]"
    assert format_summary(summarize([0.31])) == "31.00 ± n/a"
    assert format_summary(summarize([])) == "n/a"
