"""Is RD4AD's distance what keeps it below PaDiM? One trained RD4AD, its features scored with other distances.

RD4AD scores a position by ``1 - cos(teacher, student)``: every channel weighs as its magnitude says,
and every position is held to the same yardstick. anomalib's PaDiM scores the same teacher features
by their Mahalanobis distance to a Gaussian fitted per position on normal images, which weighs each
channel direction by how little it varies on normal images. This script takes an RD4AD checkpoint
written by ``anomalib-ext benchmark``, extracts the teacher's and the student's features for the
training images (the statistics) and the test images (the scores), and prints image / pixel AUROC
per teacher layer and for the official fusion (the three layers' maps upsampled, summed and smoothed
with the model's own sigma-4 blur), then how closely the student follows the teacher on training, normal
test and defective test images. The distances:

- the model's own ``1 - cos(t, s)`` and the Euclidean distance between ``t`` and ``s``;
- the teacher alone: distance to the per-position normal mean, and the per-position Gaussian
  (PaDiM's distance on one layer, all its channels, regularised by 0.01 as PaDiM is);
- the residual ``t - s`` under a per-position Gaussian, a per-position diagonal one (channel z-scores)
  and one Gaussian shared by every position.

If the residual under a Gaussian ranks images as the teacher under a Gaussian does, and both far above
``1 - cos``, then the student's residual carries what PaDiM sees and the distance is what loses it.
The statistics come from the training images, which the student was trained on (its residuals there
are smaller than on new normal images); the pixel AUROC is on every 7th pixel of the test maps.

    python scripts/benchmarks/rd4ad_distance.py --model RD4AD --checkpoint model.ckpt \
        --data ../shared/datasets/mtd --image-size 128
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_ext.benchmark.diagnosis import checkpoint_parser, load_trained
from anomalib_ext.callbacks.progress import auroc_any_scale

# Added to each covariance's diagonal, times the mean channel variance: PaDiM adds an absolute 0.01 to raw
# features; relative to the spread it stays as gentle on unit-length directions as on raw features.
REGULARISATION = 0.01


@dataclass
class Features:
    """Teacher and student features per layer (``N x C x h x w``), and per image its label and mask."""

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    labels: torch.Tensor
    masks: torch.Tensor | None

    def residual(self) -> list[torch.Tensor]:
        """``teacher - student`` per layer."""
        return [t - s for t, s in zip(self.teacher, self.student, strict=True)]


def extract(model: torch.nn.Module, loader: torch.utils.data.DataLoader) -> Features:
    """Run the teacher and the student over ``loader`` (after the model's own pre-processing)."""
    rd4ad = model.model
    teacher: list[list[torch.Tensor]] = []
    student: list[list[torch.Tensor]] = []
    labels, masks = [], []
    with torch.no_grad():
        for batch in loader:
            images = model.pre_processor.transform(batch.image) if model.pre_processor else batch.image
            features = list(rd4ad.encoder(images).values())
            teacher.append(features)
            student.append(rd4ad.decoder(rd4ad.bottleneck(features)))
            labels.extend(Path(path).parent.name != "good" for path in batch.image_path)
            masks.append(batch.gt_mask)
    has_masks = all(mask is not None for mask in masks)
    return Features(
        teacher=[torch.cat(layer) for layer in zip(*teacher, strict=True)],
        student=[torch.cat(layer) for layer in zip(*student, strict=True)],
        labels=torch.tensor(labels).long(),
        masks=torch.cat(masks).float() if has_masks else None,
    )


def gaussian_distance(normal: torch.Tensor, test: torch.Tensor, *, per_position: bool, diagonal: bool) -> torch.Tensor:
    """Mahalanobis distance of ``test`` features to a Gaussian fitted on ``normal`` ones, as a ``N x 1 x h x w`` map."""
    count, channels, height, width = normal.shape
    samples = normal.double().permute(2, 3, 0, 1).reshape(height * width, count, channels)
    if not per_position:
        samples = samples.reshape(1, -1, channels)
    mean = samples.mean(dim=1, keepdim=True)
    centred = samples - mean
    covariance = centred.transpose(1, 2) @ centred / (centred.shape[1] - 1)
    if diagonal:
        covariance = torch.diag_embed(torch.diagonal(covariance, dim1=1, dim2=2))
    spread = torch.diagonal(covariance, dim1=1, dim2=2).mean(dim=1).view(-1, 1, 1)
    precision = torch.linalg.inv(covariance + REGULARISATION * spread * torch.eye(channels, dtype=torch.float64))
    offsets = test.double().permute(2, 3, 0, 1).reshape(height * width, -1, channels) - mean
    squared = torch.einsum("pnc,pcd,pnd->pn", offsets, precision, offsets).clamp_min(0)
    return squared.sqrt().reshape(height, width, -1).permute(2, 0, 1).unsqueeze(1).float()


Distance = Callable[[Features, Features, int], torch.Tensor]


def gaussian(
    features: Callable[[Features, int], torch.Tensor],
    *,
    per_position: bool = True,
    diagonal: bool = False,
) -> Distance:
    """A distance: the Mahalanobis distance of ``features(test)`` to a Gaussian fitted on ``features(train)``."""
    return lambda train, test, layer: gaussian_distance(
        features(train, layer),
        features(test, layer),
        per_position=per_position,
        diagonal=diagonal,
    )


def teacher(features: Features, layer: int) -> torch.Tensor:
    """The teacher's features."""
    return features.teacher[layer]


def unit_teacher(features: Features, layer: int) -> torch.Tensor:
    """The teacher's features scaled to unit length at each position (their direction)."""
    return F.normalize(features.teacher[layer], dim=1)


def unit_residual(features: Features, layer: int) -> torch.Tensor:
    """``t / |t| - s / |s|``: the residual RD4AD's loss sees (its squared length is ``2 * (1 - cos)``)."""
    return F.normalize(features.teacher[layer], dim=1) - F.normalize(features.student[layer], dim=1)


DISTANCES: dict[str, Distance] = {
    "1 - cos(t, s) (the model's)": lambda _train, test, layer: (
        1 - F.cosine_similarity(test.teacher[layer], test.student[layer], dim=1).unsqueeze(1)
    ),
    "teacher: Euclidean to the normal mean at its position": lambda train, test, layer: (
        test.teacher[layer] - train.teacher[layer].mean(dim=0, keepdim=True)
    ).norm(dim=1, keepdim=True),
    "teacher: Gaussian per position (PaDiM's distance)": gaussian(teacher),
    "teacher direction (unit length): Gaussian per position": gaussian(unit_teacher),
    "unit residual (t, s at unit length): Gaussian per position": gaussian(unit_residual),
    "unit residual: channel z-scores per position": gaussian(unit_residual, diagonal=True),
    "unit residual: one Gaussian for all positions": gaussian(unit_residual, per_position=False),
}


def auroc_cell(maps: torch.Tensor, test: Features) -> str:
    """``image / pixel`` AUROC in percent of ``N x 1 x H x W`` maps, images scored by their maximum."""
    image = 100 * auroc_any_scale(maps.flatten(1).max(dim=1).values, test.labels)
    if test.masks is None:
        return f"{image:.1f} / n/a"
    pixel = 100 * auroc_any_scale(maps.flatten()[::7], test.masks.flatten()[::7].long())
    return f"{image:.1f} / {pixel:.1f}"


def distance_table(model: torch.nn.Module, train: Features, test: Features, size: tuple[int, int]) -> str:
    """Markdown: one row per distance, one column per teacher layer and one for the three summed."""
    blur = model.model.anomaly_map_generator.blur
    layers = range(len(test.teacher))
    header = " | ".join(f"layer {layer + 1}" for layer in layers)
    lines = [f"| distance | {header} | layers summed |", "|---|" + "---|" * (len(layers) + 1)]
    for name, distance in DISTANCES.items():
        maps = [
            blur(F.interpolate(distance(train, test, layer), size=size, mode="bilinear", align_corners=True))
            for layer in layers
        ]
        cells = [auroc_cell(layer_map, test) for layer_map in maps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {auroc_cell(sum(maps), test)} |")
    return "\n".join(lines)


def student_table(train: Features, test: Features) -> str:
    """Markdown per layer: mean ``1 - cos(t, s)`` on each split, and the student's norm against the teacher's.

    RD4AD's loss constrains the student's direction only, so ``|s| / |t|`` is free: a Euclidean distance
    between the two measures the scale as much as the fit.
    """

    def mean_cosine_distance(features: Features, layer: int, keep: torch.Tensor) -> str:
        distance = 1 - F.cosine_similarity(features.teacher[layer], features.student[layer], dim=1)
        return f"{distance[keep].mean():.3f}"

    every_image = torch.ones_like(train.labels, dtype=torch.bool)
    lines = [
        "| layer | 1 - cos, training | 1 - cos, normal test | 1 - cos, defective test | student / teacher norm |",
        "|---|---|---|---|---|",
    ]
    for layer in range(len(test.teacher)):
        norms = train.student[layer].norm(dim=1) / train.teacher[layer].norm(dim=1).clamp_min(1e-8)
        cells = [
            mean_cosine_distance(train, layer, every_image),
            mean_cosine_distance(test, layer, test.labels == 0),
            mean_cosine_distance(test, layer, test.labels == 1),
            f"{norms.mean():.2f}",
        ]
        lines.append(f"| {layer + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Load the checkpoint, extract both splits' features, print the table."""
    parser = checkpoint_parser(__doc__)
    args = parser.parse_args()
    model, datamodule = load_trained(parser, args)
    if not hasattr(model.model, "decoder"):
        parser.error(f"--model {args.model}: this diagnosis needs an RD4AD checkpoint (a teacher and a student)")
    train = extract(model, datamodule.train_dataloader())
    test = extract(model, datamodule.test_dataloader())
    print(distance_table(model, train, test, (args.image_size, args.image_size)))
    print("\nHow closely the student follows the teacher (means over positions and images):\n")
    print(student_table(train, test))
    print(f"\n{len(train.labels)} training images made the statistics; {len(test.labels)} test images scored.")


if __name__ == "__main__":
    main()
