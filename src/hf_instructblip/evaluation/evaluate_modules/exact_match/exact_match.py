"""Exact match after the VQA normalisation (GQA, VSR, IconQA) as an `evaluate` module over `metrics.exact_match`."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import exact_match


class ExactMatch(base.MetricOverFunction):
    function = staticmethod(exact_match)
    # One reference per example, or a list of acceptable ones.
    features = [
        datasets.Features({"predictions": base.STRING, "references": base.STRING}),
        datasets.Features({"predictions": base.STRING, "references": base.STRINGS}),
    ]
