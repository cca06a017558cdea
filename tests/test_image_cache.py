"""The decoded-image cache: same tensors as decoding every time, invalidated by a changed file, within its budget."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

from anomalib_ext.data import DatasetError, MVTecStyle
from anomalib_ext.data.image_cache import DecodedImageCache

if TYPE_CHECKING:
    from pathlib import Path


def _item_tensors(datamodule: MVTecStyle) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    datamodule.setup()
    return [
        (item.image.as_subclass(torch.Tensor), None if item.gt_mask is None else item.gt_mask.as_subclass(torch.Tensor))
        for dataset in (datamodule.train_data, datamodule.test_data)
        for item in (dataset[i] for i in range(len(dataset)))
    ]


def test_cached_items_equal_uncached_ones(texture_root: Path) -> None:
    """Twice through the cache (second time from memory) equals decoding every access, bit for bit."""
    options = {"image_size": 48, "num_workers": 0}
    cached = MVTecStyle(texture_root / "brick", **options)
    uncached = MVTecStyle(texture_root / "brick", cache_images=False, **options)
    first, reference = _item_tensors(cached), _item_tensors(uncached)
    assert len(cached.image_cache) > 0
    assert len(uncached.image_cache) == 0
    second = _item_tensors(cached)
    for (image, mask), (image2, _mask2), (ref_image, ref_mask) in zip(first, second, reference, strict=True):
        assert image.shape == (3, 48, 48)
        assert image.dtype == torch.float32
        assert torch.equal(image, ref_image)
        assert torch.equal(image2, ref_image)
        assert (mask is None and ref_mask is None) or torch.equal(mask, ref_mask)


def test_changed_file_is_read_again(tmp_path: Path) -> None:
    """A file rewritten in place is decoded again, and its stale entry is dropped."""
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    cache = DecodedImageCache()
    assert int(cache.image(path, (4, 4)).max()) == 0
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(1, 10**18))  # a new modification time even on coarse-clock file systems
    assert int(cache.image(path, (4, 4)).min()) == 200
    assert len(cache) == 1  # the stale entry was dropped
    assert cache.bytes == 3 * 4 * 4


def test_cache_respects_its_budget(tmp_path: Path) -> None:
    """Entries past ``max_bytes`` are not stored, yet the image is still served from its file."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(paths[-1])
    cache = DecodedImageCache(max_bytes=2 * 3 * 8 * 8)
    images = [cache.image(path, None) for path in paths]
    assert len(cache) == 2
    assert cache.bytes <= cache.max_bytes
    assert torch.equal(cache.image(paths[2], None), images[2])  # past the budget: still served, from the file


def test_truncated_image_is_named_by_the_cache(tmp_path: Path) -> None:
    """A truncated image read through the cache fails naming the file."""
    path = tmp_path / "cut.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DatasetError, match=r"cut\.png"):
        DecodedImageCache().image(path, (16, 16))


def test_cache_survives_pickling_for_spawned_workers(tmp_path: Path) -> None:
    """The cache pickles with its entries (for spawned data-loader workers) and works after unpickling."""
    import pickle  # noqa: S403  # a round trip of our own object, as spawned workers receive it

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    cache = DecodedImageCache()
    cache.image(path, None)
    restored = pickle.loads(pickle.dumps(cache))  # noqa: S301  # data this test just pickled
    assert len(restored) == 1
    assert torch.equal(restored.image(path, None), cache.image(path, None))


def _category_with_one_defect(root: Path, height: int, width: int) -> tuple[int, int]:
    """An MVTec-style folder whose one defective image has a single bright pixel, marked by its mask."""
    row, col = 1, width - 2  # off every axis of symmetry, so a wrong turn moves it
    for folder in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / folder).mkdir(parents=True)
    dark = np.zeros((height, width, 3), np.uint8)
    Image.fromarray(dark).save(root / "train/good/000.png")
    Image.fromarray(dark).save(root / "test/good/000.png")
    spot, mask = dark.copy(), np.zeros((height, width), np.uint8)
    spot[row, col], mask[row, col] = 255, 255
    Image.fromarray(spot).save(root / "test/spot/000.png")
    Image.fromarray(mask).save(root / "ground_truth/spot/000_mask.png")
    return row, col


@pytest.mark.parametrize("cache_images", [True, False])
def test_landscape_turns_portrait_images_with_their_masks(tmp_path: Path, cache_images: bool) -> None:
    """``landscape=True``: a portrait image comes out wide, its mask turned with it (marking the bright pixel)."""
    _category_with_one_defect(tmp_path / "tall", height=12, width=6)
    datamodule = MVTecStyle(tmp_path / "tall", image_size=None, landscape=True, cache_images=cache_images)
    datamodule.setup()
    item = next(item for item in datamodule.test_data if item.gt_label == 1)
    assert item.image.shape == (3, 6, 12)
    assert item.gt_mask.shape == (6, 12)
    assert torch.equal(item.image[0] > 0.5, item.gt_mask.bool())
    assert int(item.gt_mask.sum()) == 1


def test_landscape_keeps_wide_images_and_is_part_of_the_cache_key(tmp_path: Path) -> None:
    """A wide image is left as it is; one cache serves a portrait file both turned and not."""
    wide = tmp_path / "wide.png"
    Image.fromarray(np.arange(6 * 12 * 3, dtype=np.uint8).reshape(6, 12, 3)).save(wide)
    cache = DecodedImageCache()
    assert torch.equal(cache.image(wide, None, landscape=True), cache.image(wide, None))
    tall = tmp_path / "tall.png"
    Image.fromarray(np.arange(12 * 6 * 3, dtype=np.uint8).reshape(12, 6, 3)).save(tall)
    turned, kept = cache.image(tall, (4, 8), landscape=True), cache.image(tall, (8, 4))
    assert turned.shape == (3, 4, 8)
    assert kept.shape == (3, 8, 4)
    assert torch.equal(cache.image(tall, None, landscape=True), cache.image(tall, None).rot90(1, dims=(-2, -1)))
