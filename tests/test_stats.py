"""core.stats against values computed by hand in the comments, so a wrong formula cannot pass."""

from __future__ import annotations

import pytest

from core.stats import Agreement, cohen_kappa, holm, kappa_label, paired_bootstrap, wilson_interval


def test_wilson_interval_for_8_of_10_is_the_textbook_one():
    low, high = wilson_interval(8, 10)
    assert round(low, 3) == 0.490 and round(high, 3) == 0.943
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_interval_is_still_importable_from_compare():
    from services.compare import wilson_interval as from_compare

    assert from_compare is wilson_interval


def test_cohen_kappa_textbook_50_items():
    # yes/yes 20, yes/no 5, no/yes 10, no/no 15 (rater a first).
    # po = (20 + 15) / 50 = 0.7
    # a says yes 25/50 = 0.5, b says yes 30/50 = 0.6
    # pe = 0.5 * 0.6 + 0.5 * 0.4 = 0.5;  kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    agreement = cohen_kappa(a, b)
    assert agreement.observed == pytest.approx(0.7)
    assert agreement.expected == pytest.approx(0.5)
    assert agreement.kappa == pytest.approx(0.4)
    assert agreement.n == 50 and set(agreement.categories) == {"yes", "no"}


def test_cohen_kappa_small_binary_case():
    a = [1, 1, 0, 0, 1, 0, 1, 1, 0, 1]
    b = [1, 1, 0, 1, 1, 0, 1, 0, 0, 1]
    # Agree on items 0,1,2,4,5,6,8,9 -> po = 8/10 = 0.8
    # a has six 1s (0.6), b has six 1s (0.6): pe = 0.6*0.6 + 0.4*0.4 = 0.52
    # kappa = (0.8 - 0.52) / (1 - 0.52) = 0.28 / 0.48 = 7/12 = 0.58333
    agreement = cohen_kappa(a, b)
    assert agreement.observed == pytest.approx(0.8)
    assert agreement.expected == pytest.approx(0.52)
    assert agreement.kappa == pytest.approx(7 / 12)
    assert kappa_label(agreement.kappa) == "moderate"


def test_cohen_kappa_undefined_cases():
    # Both raters say "correct" to everything: pe = 1 * 1 = 1, kappa would be 0/0.
    same = cohen_kappa([True] * 5, [True] * 5)
    assert same.kappa is None and same.observed == 1.0 and same.expected == 1.0
    assert cohen_kappa([], []) == Agreement(kappa=None, observed=0.0, expected=0.0, n=0, categories=())
    with pytest.raises(ValueError):
        cohen_kappa([1, 0], [1])
    # Total disagreement on a balanced pair: po = 0, pe = 0.5 -> kappa = -1.
    assert cohen_kappa([1, 0], [0, 1]).kappa == pytest.approx(-1.0)


def test_kappa_labels_follow_landis_and_koch():
    cases = {-0.1: "poor", 0.0: "slight", 0.2: "slight", 0.3: "fair", 0.5: "moderate",
             0.7: "substantial", 0.81: "almost perfect", 1.0: "almost perfect", None: "undefined"}
    assert {k: kappa_label(k) for k in cases} == cases


def test_holm_step_down_by_hand():
    # Sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> raised to 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    by_name = holm({"ft": 0.01, "rag": 0.04, "ft+rag": 0.03, "ft2": 0.005})
    assert by_name == pytest.approx({"ft": 0.03, "rag": 0.06, "ft+rag": 0.06, "ft2": 0.02})
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == [] and holm({}) == {}


def test_paired_bootstrap_is_deterministic_and_covers_the_true_difference():
    # a - b = 0.2 + e with e = +-0.5 alternating: the sample mean difference is exactly 0.2.
    b = [0.1 * (i % 7) for i in range(40)]
    a = [bi + 0.2 + (0.5 if i % 2 else -0.5) for i, bi in enumerate(b)]
    first = paired_bootstrap(a, b, seed=3)
    assert first == paired_bootstrap(a, b, seed=3)
    assert first.diff == pytest.approx(0.2)
    assert first.low < 0.2 < first.high
    assert first.n == 40 and first.resamples == 2000 and first.seed == 3
    assert first.to_dict()["diff"] == pytest.approx(0.2)
    assert paired_bootstrap(a, b, seed=4) != first  # the seed really drives the resampling


def test_paired_bootstrap_no_difference_and_clear_difference():
    same = paired_bootstrap([1, 0, 1, 0.5], [1, 0, 1, 0.5])
    assert same.p_value == 1.0 and (same.low, same.high) == (0.0, 0.0) and same.diff == 0.0
    better = paired_bootstrap([1.0] * 30, [0.0] * 30)
    assert better.diff == 1.0 and better.p_value < 0.01 and better.low == 1.0
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
