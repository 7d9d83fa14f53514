"""Zero-shot evaluation with the paper's held-out protocol.

Its own room: it imports the model files, never the reverse. The metrics are pure functions over Python lists
(`roc_auc` needs the `eval` extra's scikit-learn).
"""

from .metrics import (
    answer_metrics,
    cider_d,
    exact_match,
    ivqa_accuracy,
    mean_reciprocal_rank,
    multiple_choice_accuracy,
    normalize_answer,
    ptb_tokenize,
    roc_auc,
    vqa_accuracy,
)

__all__ = [
    "answer_metrics",
    "cider_d",
    "exact_match",
    "ivqa_accuracy",
    "mean_reciprocal_rank",
    "multiple_choice_accuracy",
    "normalize_answer",
    "ptb_tokenize",
    "roc_auc",
    "vqa_accuracy",
]
