"""Accuracy of ranked choices (ScienceQA, IconQA, MSVD-QA, MSRVTT-QA) as an `evaluate` module."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import multiple_choice_accuracy


class MultipleChoiceAccuracy(base.MetricOverFunction):
    function = staticmethod(multiple_choice_accuracy)
    # The chosen option as an index or as its label.
    features = [
        datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        datasets.Features({"predictions": base.STRING, "references": base.STRING}),
    ]
