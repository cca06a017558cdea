"""A frozen network's features of each training image, computed once and reused every epoch.

Knowledge-distillation models (RD4AD, UniAD, the first stage of student-teacher models) run a
frozen ImageNet teacher on every training image in every epoch, although neither the teacher nor,
when the recipe augments nothing (the official RD4AD and UniAD code do not), the image changes.
:class:`FrozenFeatureCache` keeps the teacher's outputs per image, keyed by the image path, and
runs the teacher only for batches that hold an image it has not seen (on the whole batch, so the
features are exactly the tensors an uncached run computes for that batch); later epochs reuse them.

A cache entry is only valid for the same input. Every entry keeps a checksum of the image it was
computed from (its sum and sum of squares in float64), and a cached image that comes back
different (random augmentations, a different pre-processing) raises :class:`FeatureCacheError`
instead of training on stale features. The entries live on the device the features were computed
on, within ``max_bytes``; images beyond the budget are recomputed every time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class FeatureCacheError(RuntimeError):
    """A cached image changed between epochs, so its cached features would be stale."""


def _checksums(images: torch.Tensor) -> torch.Tensor:
    flat = images.detach().flatten(1).double()
    return torch.stack([flat.sum(1), flat.pow(2).sum(1)], dim=1)


class FrozenFeatureCache:
    """Per-image features of a frozen network (see the module docstring).

    Args:
        max_bytes: memory budget of the cached features; ``0`` caches nothing.
    """

    def __init__(self, max_bytes: int = 4 * 1024**3) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._features: dict[str, list[torch.Tensor]] = {}
        self._checksums: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        """Number of images whose features are cached."""
        return len(self._features)

    def clear(self) -> None:
        """Forget every entry (e.g. when the frozen network's weights were replaced)."""
        self._features.clear()
        self._checksums.clear()
        self.bytes = 0

    def features(
        self,
        keys: Sequence[str],
        images: torch.Tensor,
        compute: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """``compute(images)`` (a list of ``(B, ...)`` tensors), from the cache where every image of the batch is in it.

        Args:
            keys: one key per image (its path).
            images: the batch the features are computed from, ``(B, C, H, W)``.
            compute: the frozen network's forward, returning one tensor per layer.

        Raises:
            FeatureCacheError: a cached image came back with different pixels.
        """
        keys = [str(key) for key in keys]
        if len(keys) != len(images):
            msg = f"FrozenFeatureCache needs one key per image; got {len(keys)} keys for {len(images)} images."
            raise ValueError(msg)
        checksums = _checksums(images)
        cached = [key in self._features for key in keys]
        for key, checksum, hit in zip(keys, checksums, cached, strict=True):
            if hit and not torch.equal(self._checksums[key], checksum):
                msg = (
                    f"Training image {key} differs from the one its teacher features were cached for: the "
                    "feature cache needs training images without random augmentation; turn it off for this recipe."
                )
                raise FeatureCacheError(msg)
        if all(cached):
            self.hits += len(keys)
            return [torch.stack([self._features[key][layer] for key in keys]) for layer in range(self._layers(keys[0]))]
        self.misses += len(keys)
        with torch.no_grad():
            outputs = [output.detach() for output in compute(images)]
        for index, (key, hit) in enumerate(zip(keys, cached, strict=True)):
            if hit:
                continue
            entry = [output[index].clone() for output in outputs]
            size = sum(tensor.numel() * tensor.element_size() for tensor in entry)
            if self.bytes + size <= self.max_bytes:
                self._features[key] = entry
                self._checksums[key] = checksums[index]
                self.bytes += size
        return outputs

    def _layers(self, key: str) -> int:
        return len(self._features[key])
