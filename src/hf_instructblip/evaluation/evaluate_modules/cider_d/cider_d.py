"""CIDEr-D on raw captions (NoCaps, Flickr30K, COCO) as an `evaluate` module over `metrics.cider_d`; no Java."""

import datasets

from hf_instructblip.evaluation import evaluate_modules as base
from hf_instructblip.evaluation.metrics import cider_d


class CiderD(base.MetricOverFunction):
    function = staticmethod(cider_d)
    features = datasets.Features({"predictions": base.STRING, "references": base.STRINGS})
    citation = "Vedantam et al., CIDEr: Consensus-based Image Description Evaluation, CVPR 2015."
