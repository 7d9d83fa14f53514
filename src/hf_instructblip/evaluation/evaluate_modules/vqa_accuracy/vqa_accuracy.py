"""VQA accuracy (TextVQA, VizWiz, VQAv2, OK-VQA) as an `evaluate` module over `metrics.vqa_accuracy`."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import vqa_accuracy


class VqaAccuracy(base.MetricOverFunction):
    function = staticmethod(vqa_accuracy)
    features = datasets.Features({"predictions": base.STRING, "references": base.STRINGS})
    citation = "Antol et al., VQA: Visual Question Answering, ICCV 2015."
