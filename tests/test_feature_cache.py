"""The frozen-teacher feature cache: the same tensors and the same training as without it, or a clear error."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils.data import DataLoader

from anomalib_ext import RD4AD
from anomalib_ext.components.feature_cache import FeatureCacheError, FrozenFeatureCache
from tests.helpers import make_engine

if TYPE_CHECKING:
    from pathlib import Path

    from anomalib.models.components import AnomalibModule

    from anomalib_ext.data import MVTecStyle


class CountingTeacher(torch.nn.Module):
    """A tiny frozen network that counts the images it has been run on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.images_seen = 0

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Two 'layers': a conv map and its spatial mean."""
        self.images_seen += len(images)
        features = self.conv(images)
        return [features, features.mean(dim=(2, 3))]


def test_cached_features_are_the_computed_ones_and_the_teacher_runs_once() -> None:
    """A second request, in another order, is served from the cache with exactly the computed tensors."""
    teacher, cache = CountingTeacher(), FrozenFeatureCache()
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    keys = [f"img{i}.png" for i in range(4)]
    first = cache.features(keys, images, teacher)
    again = cache.features(keys[::-1], images.flip(0), teacher)  # another batch order, no teacher call
    with torch.no_grad():
        expected = teacher(images)
    assert teacher.images_seen == 4 + 4  # the first call, then the reference above
    for cached, reordered, computed in zip(first, again, expected, strict=True):
        assert torch.equal(cached, computed)
        assert torch.equal(reordered, computed.flip(0))
    assert (cache.hits, cache.misses, len(cache)) == (4, 4, 4)


def test_a_changed_image_is_refused_not_served_stale() -> None:
    """An augmented image under a cached key raises, naming the image, instead of reusing stale features."""
    cache = FrozenFeatureCache()
    images = torch.rand(2, 3, 8, 8)
    cache.features(["a", "b"], images, CountingTeacher())
    augmented = images.clone()
    augmented[1] = augmented[1].flip(-1) * 0.9  # e.g. a random flip and colour jitter
    with pytest.raises(FeatureCacheError, match="Training image b differs"):
        cache.features(["a", "b"], augmented, CountingTeacher())


def test_the_budget_caps_what_is_kept() -> None:
    """Entries past ``max_bytes`` are not kept; a key list of the wrong length is refused."""
    per_image = (4 * 6 * 6 + 4) * 4  # bytes of one image's two feature tensors (float32)
    cache = FrozenFeatureCache(max_bytes=3 * per_image)
    teacher = CountingTeacher()
    cache.features([f"{i}" for i in range(5)], torch.rand(5, 3, 8, 8), teacher)
    assert len(cache) == 3
    assert cache.bytes == 3 * per_image
    with pytest.raises(ValueError, match="one key per image"):
        cache.features(["only one"], torch.rand(2, 3, 8, 8), teacher)


def build(name: str, cache: bool) -> AnomalibModule:
    """A tiny RD4AD, UniAD or RSTPM on the offline Lite0 weights at 64 px.

    RSTPM: two stage-1 epochs (the cached stage), then one stage-2 epoch, which must run the
    teachers on its pseudo-anomalous images instead of asking the cache.
    """
    if name == "rd4ad":
        return RD4AD(
            backbone="efficientnet_lite0",
            layers=("blocks.1", "blocks.2", "blocks.4"),
            pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)),
            cache_teacher_features=cache,
            visualizer=False,
        )
    if name == "rstpm":
        from tests.models.test_rstpm import tiny_model as tiny_rstpm

        return tiny_rstpm(stage1_epochs=2, cache_teacher_features=cache, visualizer=False)
    from tests.models.test_uniad import tiny_model

    return tiny_model(cache_teacher_features=cache, visualizer=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rd4ad", "uniad", "rstpm"])
def test_training_is_bit_identical_with_the_cache(name: str, tiny_datamodule: MVTecStyle, tmp_path: Path) -> None:
    """Two epochs in a fixed batch order (f32, CPU): the same weights, bit for bit, with the teacher run once per image.

    The fixed order keeps each batch's composition the same in both runs, so the comparison
    assumes nothing about how the CPU kernels treat a batch; a cached run with shuffling reuses the
    features of the epoch-1 batch an image was first seen in.
    """

    def train(cache: bool) -> tuple[dict[str, torch.Tensor], AnomalibModule]:
        seed_everything(0, workers=True)
        model = build(name, cache)
        tiny_datamodule.setup()
        data = tiny_datamodule.train_data
        loader = DataLoader(data, batch_size=4, shuffle=False, collate_fn=data.collate_fn)
        epochs = 3 if name == "rstpm" else 2
        make_engine(tmp_path / str(cache), max_epochs=epochs, limit_val_batches=0).fit(model, train_dataloaders=loader)
        return {k: v.clone() for k, v in model.model.state_dict().items()}, model

    plain, _ = train(cache=False)
    cached, model = train(cache=True)
    assert plain.keys() == cached.keys()
    assert all(torch.equal(plain[key], cached[key]) for key in plain)
    assert model.feature_cache is not None
    assert model.feature_cache.misses == len(tiny_datamodule.train_data)  # epoch 1 only
    assert model.feature_cache.hits == len(tiny_datamodule.train_data)  # epoch 2 from the cache (RSTPM: not stage 2)
