"""ROC AUC (HatefulMemes) as an `evaluate` module over `metrics.roc_auc` (scikit-learn)."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import roc_auc


class RocAuc(base.MetricOverFunction):
    function = staticmethod(roc_auc)
    features = datasets.Features({"scores": datasets.Value("float64"), "labels": datasets.Value("int64")})
    citation = "Kiela et al., The Hateful Memes Challenge, NeurIPS 2020."
