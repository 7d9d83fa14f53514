"""Zero-shot evaluation with the paper's held-out protocol.

Its own room: it imports the model files, never the reverse. The metrics are pure functions over Python lists
(`roc_auc` needs the `eval` extra's scikit-learn); `generate_answers` and `score_candidates` predict in batches;
`TASKS` holds the paper's task protocols and `runner.evaluate_task` runs one over a dataset.
"""

from .generation import generate_answers
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
from .ranking import score_candidates
from .tasks import TASKS, EvalTask

__all__ = [
    "TASKS",
    "EvalTask",
    "answer_metrics",
    "cider_d",
    "exact_match",
    "generate_answers",
    "ivqa_accuracy",
    "mean_reciprocal_rank",
    "multiple_choice_accuracy",
    "normalize_answer",
    "ptb_tokenize",
    "roc_auc",
    "score_candidates",
    "vqa_accuracy",
]
