"""A bounded cache of the frozen vision tower's outputs for Q-Former-only training.

The paper trains only the Q-Former side; the 1B-parameter vision tower is frozen, so its output for an image never
changes, while the mixture sampler shows the same image many times (small datasets are revisited, COCO pictures
serve captioning, VQAv2, OK-VQA and A-OKVQA). [`VisionFeatureCache`] computes it once per image identity and keeps
the most recently used ones within a byte budget.
"""

from collections import OrderedDict

import torch
from torch import nn


class VisionFeatureCache:
    """Least-recently-used cache of the vision tower's frozen part, keyed by image identity, bounded in bytes.

    Cached is everything before the tower's final LayerNorm (LAVIS's `ln_vision`), which the paper trains: it is
    applied at every step, so its gradient is the same as without the cache. The keys are the `image_id`s that
    [`~recipes.prepare_dataset`] computes without decoding the image ([`~recipes.image_identity`]).

    Valid only while (1) the tower's frozen part gets no gradient, which [`image_embeds`] checks at every call, and
    (2) an image identity always gives the same `pixel_values`: the processor is deterministic, but random
    augmentation in a collator of your own would make the cache wrong, so such a collator must not emit `image_ids`.

    Args:
        max_bytes: the budget for the stored features. One EVA ViT-g image (257 × 1408 values) takes 1.4 MB in
            float32, 0.7 MB in bfloat16; features are kept where they were computed (the training device).
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.stored_bytes = 0
        self.hits = self.misses = 0

    def image_embeds(self, vision_model: nn.Module, pixel_values: torch.Tensor, image_ids: list) -> torch.Tensor:
        """The vision tower's output for `pixel_values` (B, 3, H, W), the final LayerNorm applied with autograd.

        Rows whose identity is cached skip the tower; the others are computed (one batch) and stored.
        """
        check_frozen(vision_model)
        if pixel_values.ndim != 4 or len(image_ids) != pixel_values.shape[0] or None in image_ids:
            raise ValueError(
                f"The vision cache needs one image_id per image of pixel_values (batch, 3, height, width); got "
                f"{len(image_ids)} ids ({sum(i is None for i in image_ids)} missing) for pixel_values of shape "
                f"{tuple(pixel_values.shape)}. Prepare datasets with prepare_dataset, which adds image_id."
            )
        found = {key: self.entries[key] for key in image_ids if key in self.entries}
        first_row = {key: row for row, key in reversed(list(enumerate(image_ids))) if key not in found}
        self.hits += len(image_ids) - len(first_row)
        self.misses += len(first_row)
        for key in found:
            self.entries.move_to_end(key)
        if first_row:
            with torch.no_grad():
                computed = frozen_vision_features(vision_model, pixel_values[list(first_row.values())])
            for key, features in zip(first_row, computed):
                found[key] = features
                self._store(key, features.clone())  # a view would keep the whole batch alive
        features = torch.stack([found[key] for key in image_ids])  # (B, 1 + P, Cv)
        return vision_model.post_layernorm(features)

    def _store(self, key: str, features: torch.Tensor) -> None:
        size = features.nelement() * features.element_size()
        if size > self.max_bytes:
            return
        while self.stored_bytes + size > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.stored_bytes -= evicted.nelement() * evicted.element_size()
        self.entries[key] = features
        self.stored_bytes += size


def frozen_vision_features(vision_model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower up to (not including) its final LayerNorm."""
    return vision_model.encoder(vision_model.embeddings(pixel_values))


def check_frozen(vision_model: nn.Module) -> None:
    trainable = [
        name
        for name, parameter in vision_model.named_parameters()
        if parameter.requires_grad and not name.startswith("post_layernorm.")
    ]
    if trainable:
        raise ValueError(
            f"The vision cache needs a frozen vision tower, but {len(trainable)} of its parameters require gradients "
            f"(e.g. {trainable[0]}): cached features would go stale. Train with train_vision_model=False or without "
            "the cache."
        )


__all__ = ["VisionFeatureCache", "check_frozen", "frozen_vision_features"]
