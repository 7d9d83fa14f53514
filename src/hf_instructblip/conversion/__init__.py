"""Conversion of Salesforce LAVIS InstructBLIP checkpoints (released or fine-tuned) to hf_instructblip.

Not part of the model files shipped to the Hub; it imports them, never the other way round.
"""

from .convert import convert_lavis_checkpoint, push_to_hub
from .errors import ConversionError

__all__ = ["ConversionError", "convert_lavis_checkpoint", "push_to_hub"]
