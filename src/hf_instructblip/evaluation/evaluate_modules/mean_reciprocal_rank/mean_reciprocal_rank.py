"""Mean reciprocal rank (VisDial) as an `evaluate` module over `metrics.mean_reciprocal_rank`."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import mean_reciprocal_rank


class MeanReciprocalRank(base.MetricOverFunction):
    function = staticmethod(mean_reciprocal_rank)
    features = datasets.Features({"ranks": datasets.Value("int64")})
    citation = "Das et al., Visual Dialog, CVPR 2017."
