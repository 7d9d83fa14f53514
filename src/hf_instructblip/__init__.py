"""hf_instructblip: InstructBLIP on the Hugging Face stack.

Importing the package registers its config, model and processor with the `transformers` Auto classes, so
`AutoModel`, `AutoModelForImageTextToText`, `AutoProcessor` and `pipeline("image-text-to-text")` load checkpoints
whose `model_type` is `"hf_instructblip"`. Saved checkpoints also carry the code (`auto_map`), so they load with
`trust_remote_code=True` where this package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForVisualQuestionAnswering,
    AutoProcessor,
)

from .configuration_instructblip import InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig
from .modeling_instructblip import (
    InstructBlipForConditionalGeneration,
    InstructBlipOutput,
    InstructBlipPreTrainedModel,
    InstructBlipQFormerModel,
    InstructBlipVisionModel,
)
from .processing_instructblip import InstructBlipProcessor


def _register():
    AutoConfig.register(InstructBlipConfig.model_type, InstructBlipConfig, exist_ok=True)
    AutoConfig.register(InstructBlipVisionConfig.model_type, InstructBlipVisionConfig, exist_ok=True)
    AutoConfig.register(InstructBlipQFormerConfig.model_type, InstructBlipQFormerConfig, exist_ok=True)
    for auto_class in (AutoModel, AutoModelForImageTextToText, AutoModelForVisualQuestionAnswering):
        auto_class.register(InstructBlipConfig, InstructBlipForConditionalGeneration, exist_ok=True)
    AutoModel.register(InstructBlipVisionConfig, InstructBlipVisionModel, exist_ok=True)
    AutoModel.register(InstructBlipQFormerConfig, InstructBlipQFormerModel, exist_ok=True)
    AutoProcessor.register(InstructBlipConfig, InstructBlipProcessor, exist_ok=True)
    # Saved checkpoints name these classes in `auto_map` and carry their files, for `trust_remote_code` loading.
    InstructBlipConfig.register_for_auto_class()
    InstructBlipForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    InstructBlipProcessor.register_for_auto_class()


_register()

__all__ = [
    "InstructBlipConfig",
    "InstructBlipForConditionalGeneration",
    "InstructBlipOutput",
    "InstructBlipPreTrainedModel",
    "InstructBlipProcessor",
    "InstructBlipQFormerConfig",
    "InstructBlipQFormerModel",
    "InstructBlipVisionConfig",
    "InstructBlipVisionModel",
]
