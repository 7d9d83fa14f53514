"""Zero-shot evaluation: batched generation, ranked choice, the paper's held-out task protocols.

Nothing here is imported by the model files.
"""

from .generation import generate_answers
from .ranking import score_candidates

__all__ = ["generate_answers", "score_candidates"]
