"""iVQA accuracy as an `evaluate` module over `metrics.ivqa_accuracy`."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import ivqa_accuracy


class IvqaAccuracy(base.MetricOverFunction):
    function = staticmethod(ivqa_accuracy)
    features = datasets.Features({"predictions": base.STRING, "references": base.STRINGS})
    citation = "Yang et al., Just Ask: Learning to Answer Questions from Millions of Narrated Videos, ICCV 2021."
