"""MVTec-style folders and the texture demo set: layout, grayscale JPEGs, and errors that name the file."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from anomalib_ext.data import DatasetError, MVTecStyle, make_mvtec_style_samples, make_texture_dataset

if TYPE_CHECKING:
    from pathlib import Path


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _mtd_like(root: Path, sizes: tuple[tuple[int, int], ...] = ((90, 60), (120, 80))) -> Path:
    """A tiny grayscale-JPEG dataset of mixed sizes laid out like MTD."""
    rng = np.random.default_rng(0)
    for split, label, count in (("train", "good", 3), ("test", "good", 2), ("test", "crack", 2)):
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            width, height = sizes[i % len(sizes)]
            Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8)).save(folder / f"exp_{i}.jpg")
            if label != "good":
                masks = root / "ground_truth" / label
                masks.mkdir(parents=True, exist_ok=True)
                mask = np.zeros((height, width), dtype=np.uint8)
                mask[10:30, 10:30] = 255
                Image.fromarray(mask).save(masks / f"exp_{i}_mask.png")
    return root


def test_texture_folder_built_by_another_call_is_rebuilt_not_reused(tmp_path: Path) -> None:
    """A category's images depend on its place in the list; a folder from another list is rebuilt for this one."""
    kwargs = {"image_size": 48, "n_train": 2, "n_test_good": 1, "n_test_per_defect": 1}
    make_texture_dataset(tmp_path / "a", categories=("grass",), **kwargs)
    alone = _digest(tmp_path / "a" / "grass")
    make_texture_dataset(tmp_path / "a", categories=("brick", "grass"), **kwargs)
    make_texture_dataset(tmp_path / "b", categories=("brick", "grass"), **kwargs)
    assert _digest(tmp_path / "a" / "grass") == _digest(tmp_path / "b" / "grass") != alone


def test_texture_dataset_is_deterministic_and_mvtec_shaped(tmp_path: Path) -> None:
    """The built texture set is byte-identical on every build, in MVTec layout, with a non-empty mask per defect."""
    kwargs = {"categories": ("gravel",), "image_size": 48, "n_train": 3, "n_test_good": 2, "n_test_per_defect": 2}
    first = make_texture_dataset(tmp_path / "a", **kwargs) / "gravel"
    second = make_texture_dataset(tmp_path / "b", **kwargs) / "gravel"
    assert _digest(first) == _digest(second)
    samples = make_mvtec_style_samples(first)
    assert (samples.split == "train").sum() == 3
    assert sorted(samples[samples.label != "good"].label.unique()) == ["contamination", "scratch", "stain"]
    for mask_path in samples[samples.label != "good"].mask_path:
        assert np.asarray(Image.open(mask_path)).max() == 255  # every defect has a non-empty mask


def test_unknown_texture_is_rejected(tmp_path: Path) -> None:
    """A texture category that is not available fails with the available ones."""
    with pytest.raises(ValueError, match="available"):
        make_texture_dataset(tmp_path, categories=("marble",))


def test_grayscale_jpegs_of_mixed_sizes_batch_as_rgb(tmp_path: Path) -> None:
    """Grayscale JPEGs of different sizes load as same-sized RGB batches with matching masks and labels."""
    datamodule = MVTecStyle(_mtd_like(tmp_path), image_size=32, train_batch_size=3, eval_batch_size=4)
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    assert batch.image.shape == (4, 3, 32, 32)
    assert batch.gt_mask.shape == (4, 32, 32)
    assert batch.gt_label.tolist().count(True) == 2
    assert batch.gt_mask[batch.gt_label].any()


def test_missing_mask_names_the_image(tmp_path: Path) -> None:
    """A defective image without a mask fails naming the image and the mask file expected."""
    root = _mtd_like(tmp_path)
    (root / "ground_truth" / "crack" / "exp_1_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"exp_1\.jpg.*exp_1_mask\.png"):
        make_mvtec_style_samples(root)


def test_folder_without_ground_truth_is_image_level_data(tmp_path: Path) -> None:
    """No ``ground_truth/`` at all (e.g. MVTec screw with unpairable masks): labels only, no mask error."""
    import shutil

    root = _mtd_like(tmp_path)
    shutil.rmtree(root / "ground_truth")
    samples = make_mvtec_style_samples(root)
    assert samples.attrs["task"] == "classification"
    assert (samples[samples.label == "crack"].mask_path == "").all()
    assert samples.label_index.tolist().count(1) == 2


def test_mask_of_wrong_size_is_reported(tmp_path: Path) -> None:
    """A mask whose size differs from its image's is reported with both sizes, before training."""
    root = _mtd_like(tmp_path)
    Image.new("L", (7, 7)).save(root / "ground_truth" / "crack" / "exp_0_mask.png")
    with pytest.raises(DatasetError, match=r"exp_0_mask\.png has size \(7, 7\)"):
        make_mvtec_style_samples(root)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    """A file that is not an image is named when the samples are listed, not mid-training."""
    root = _mtd_like(tmp_path)
    (root / "train" / "good" / "exp_0.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"Cannot read image .*exp_0\.jpg"):
        make_mvtec_style_samples(root)


def test_truncated_image_is_named(tmp_path: Path) -> None:
    """A truncated JPEG is named when the samples are listed."""
    root = _mtd_like(tmp_path)
    path = root / "test" / "good" / "exp_1.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"exp_1\.jpg"):
        make_mvtec_style_samples(root)


def test_not_an_mvtec_folder(tmp_path: Path) -> None:
    """A folder without ``train/good`` is rejected with that path in the message."""
    with pytest.raises(DatasetError, match=r"train/good"):
        MVTecStyle(tmp_path).setup()


def test_holdout_is_a_seeded_part_of_train_that_is_never_trained_on(tmp_path: Path) -> None:
    """``holdout_fraction`` sets a seeded share of train aside before the validation split; ``1.0`` is refused."""
    root = _mtd_like(tmp_path)
    for index in range(3, 10):  # 10 training images in all
        Image.fromarray(np.full((60, 90), index * 20, dtype=np.uint8)).save(
            root / "train" / "good" / f"extra_{index}.jpg",
        )

    def split(**options: object) -> tuple[set[str], set[str]]:
        """The training and held-out image paths of a data module set up with ``options``."""
        datamodule = MVTecStyle(root, image_size=32, **options)  # type: ignore[arg-type]
        datamodule.setup()
        held = set() if datamodule.holdout_data is None else set(datamodule.holdout_data.samples.image_path)
        return set(datamodule.train_data.samples.image_path), held

    everything, none = split()
    assert len(everything) == 10
    assert not none
    train, held = split(holdout_fraction=0.2)
    assert len(held) == 2
    assert held.isdisjoint(train)
    assert held | train == everything
    assert split(holdout_fraction=0.2) == (train, held)  # the same images every run
    assert split(holdout_fraction=0.2, holdout_seed=1)[1] != held
    train, held = split(holdout_fraction=0.2, val_split_mode="from_train", val_split_ratio=0.2)
    assert len(held) == 2  # held out first,
    assert len(train) < 8  # then anomalib's validation split from the rest
    with pytest.raises(ValueError, match="holdout_fraction"):
        MVTecStyle(root, holdout_fraction=1.0)
