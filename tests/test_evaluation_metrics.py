"""Metrics of the zero-shot protocol: exact values from the official scripts' rules, bad input, docstring examples."""

import doctest

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_instructblip.evaluation import metrics
from hf_instructblip.evaluation.metrics import (
    answer_metrics,
    exact_match,
    ivqa_accuracy,
    mean_reciprocal_rank,
    multiple_choice_accuracy,
    normalize_answer,
    roc_auc,
    vqa_accuracy,
)

# (answer, what the official VQA script's normalisation makes of it), each case naming the rule it exercises.
VQA_NORMALIZATION_CASES = [
    ("Two dogs.", "2 dogs"),  # final period dropped, number word → digit, lower case
    ("TEN", "10"),  # lower-cased before the number map
    ("none", "0"),
    ("eleven", "eleven"),  # the map stops at ten
    ("The one", "1"),  # article dropped
    ("an apple", "apple"),
    ("a", ""),  # an answer that is only an article vanishes
    ("black/white", "black white"),  # punctuation not next to a space → space
    ("black / white", "black white"),  # next to a space → removed
    ("x-ray", "x ray"),
    ("one-way", "1 way"),  # split by the hyphen first, then mapped
    ("(left)", "left"),
    ('he said "hi"', "he said hi"),
    ("yes, sir", "yes sir"),
    ("1,000", "1000"),  # digit-comma-digit: every listed mark is removed outright
    ("1,000 dogs/cats", "1000 dogscats"),
    ("3.5", "3.5"),  # a period before a digit stays
    ("5.", "5"),
    ("U.S.A.", "usa"),
    ("e.g. red", "eg red"),
    ("It's the U.S. flag!", "it's us flag"),  # the apostrophe is not punctuation to the script
    ("3:00", "3:00"),  # nor is the colon
    ("x;y", "x y"),
    ("dont", "don't"),  # contractions get their apostrophe back
    ("whats up", "what's up"),
    ("twas", "'twas"),
    ("Im", "im"),  # the script's capitalised keys never match after lower-casing
    ("somebody'd", "somebodyd"),  # the script's reversed entry
    ("\tleft\n", "left"),
    ("  many   spaces  ", "many spaces"),
    ("a" + "." * 40, "a" + "." * 8),  # `sub(..., re.UNICODE)`: at most 32 periods removed
]


@pytest.mark.parametrize("answer, expected", VQA_NORMALIZATION_CASES)
def test_normalize_answer_follows_the_official_vqa_script(answer, expected):
    assert normalize_answer(answer) == expected


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_averages_min_one_matches_over_three_across_leave_one_out_subsets(matches, expected):
    references = [["red"] * matches + ["blue"] * (10 - matches)]
    assert vqa_accuracy(["red"], references) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_leaves_out_one_answer_by_position_and_normalizes_both_sides():
    # Four identical matching answers: leaving one out still leaves three. (Leaving out every equal string, as a
    # naive port of the script's record comparison to plain strings would, gives 0.6.)
    assert vqa_accuracy(["Two"], [["2", "two", "2.", "The two"] + ["3"] * 6]) == 1.0
    assert vqa_accuracy(["red", "blue"], [["red"] * 10, ["red"] * 9 + ["blue"]]) == pytest.approx((1.0 + 0.3) / 2)


def test_vqa_accuracy_on_other_list_lengths():
    # 5 answers, 2 match: 2 subsets keep 1 match (1/3), 3 keep 2 (2/3).
    assert vqa_accuracy(["red"], [["red", "red", "a", "b", "c"]]) == pytest.approx((2 / 3 + 3 * 2 / 3) / 5)
    with pytest.raises(ValueError, match=r"references\[1\] has 1 answer.*exact_match"):
        vqa_accuracy(["red", "red"], [["red", "red"], ["red"]])
    with pytest.raises(ValueError, match=r"references\[0\] has 0 answer.*without references apart"):
        vqa_accuracy(["red"], [[]])


def test_exact_match_normalizes_and_accepts_any_of_several_references():
    assert exact_match(["Two", "a cat", "dog", "Yes."], ["2", ["dog", "Cat"], "cat", ["yes"]]) == 0.75
    assert exact_match(["the left"], ["left"]) == 1.0


def test_ivqa_accuracy_is_min_one_matches_over_two_without_leave_one_out():
    references = [["dog", "puppy", "dog", "pet", "animal"], ["cat"] * 5, ["a kitten", "cat", "pet", "pet", "pet"]]
    assert ivqa_accuracy(["Dog", "cat", "kitten"], references) == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert ivqa_accuracy(["bird"], [["dog"] * 5]) == 0.0


def test_multiple_choice_accuracy_and_mean_reciprocal_rank():
    assert multiple_choice_accuracy([0, 2, 1, 3], [0, 1, 1, 3]) == 0.75
    assert multiple_choice_accuracy(["(a)", "(b)"], ["(a)", "(a)"]) == 0.5
    assert mean_reciprocal_rank([1, 2, 4, 100]) == pytest.approx((1 + 0.5 + 0.25 + 0.01) / 4)
    assert mean_reciprocal_rank(np.array([1, 1])) == 1.0
    for bad in ([0], [1.5], [True]):
        with pytest.raises(ValueError, match="1-based"):
            mean_reciprocal_rank(bad)


def test_roc_auc_counts_correctly_ordered_pairs_and_ties_as_half():
    # Positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([0.5, 0.5, 0.9], [0, 1, 1]) == 0.75
    with pytest.raises(ValueError, match="positive and negative"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([0.1, 0.2], [0, 2])


@pytest.mark.parametrize("metric", [exact_match, vqa_accuracy, ivqa_accuracy, multiple_choice_accuracy])
def test_misaligned_or_empty_inputs_are_refused(metric):
    with pytest.raises(ValueError, match=r"predictions \(2\) and references \(1\)"):
        metric(["a", "b"], [["a", "a"]])
    with pytest.raises(ValueError, match="empty"):
        metric([], [])


def test_answer_metrics_exact_values():
    labels = np.array([[-100, 5, 6, 2], [-100, -100, 7, 2], [-100, -100, -100, -100]])
    predictions = np.array([[9, 5, 0, 2], [1, 1, 7, 2], [4, 4, 4, 4]])
    result = answer_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    # 4 of the 5 answer tokens right; row 0 misses one, row 1 is exact; row 2 has no answer and is not counted.
    assert result == {"answer_token_accuracy": 0.8, "answer_exact_match": 0.5}


def test_docstring_examples_hold():
    failures, attempted = doctest.testmod(metrics, report=True)
    assert attempted > 0 and failures == 0
