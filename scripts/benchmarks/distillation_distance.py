"""Is a distillation model's distance what keeps it below PaDiM? Its own features, scored with other distances.

RD4AD and RSTPM score a position by ``1 - cos(teacher, student)``: every channel weighs as its magnitude says, and
every position is held to the same yardstick. anomalib's PaDiM scores the same teacher features by their
Mahalanobis distance to a Gaussian fitted per position on normal images, which weighs each channel direction by
how little it varies there. This script takes an RD4AD, RSTPM or UniAD checkpoint written by ``anomalib-ext
benchmark``, extracts the teacher's and the student's features of every map (RD4AD's three layers; RSTPM's pair 1
then pair 2; UniAD's one grid of aligned backbone features and its reconstruction, whose own distance is
Euclidean) for the training images (the statistics) and the test images (the scores), and prints image / pixel
AUROC per map and for all maps summed, each map upsampled and smoothed with a sigma-4 Gaussian (RD4AD's own
fusion; RSTPM multiplies its maps and UniAD measures a Euclidean distance, so the first row, the model's own map,
is theirs), then how closely the student follows the teacher on each split. The distances:

- ``1 - cos(t, s)``, RD4AD's and RSTPM's own;
- the teacher alone: Euclidean distance to the per-position normal mean, and the per-position Gaussian
  (PaDiM's distance on one layer, all its channels), on the raw features and on their direction;
- the unit residual ``t/|t| - s/|s|`` (what the cosine measures: its squared length is ``2 (1 - cos)``)
  under a per-position Gaussian, a per-position diagonal one (channel z-scores) and one Gaussian shared
  by every position.

If the unit residual under a per-position Gaussian ranks images as PaDiM does and far above ``1 - cos``,
the student's residual carries what PaDiM sees and the isotropic distance is what loses it; if the teacher's
direction alone does as well, the student adds nothing a Gaussian of the teacher lacks. The statistics come
from the training images, which the student was trained on (its residuals there are smaller than on new
normal images); the pixel AUROC is on every 7th pixel of the test maps.

    python scripts/benchmarks/distillation_distance.py --model RD4AD --checkpoint model.ckpt \
        --data ../shared/datasets/mtd --image-size 128
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components.filters import GaussianBlur2d

from anomalib_ext.benchmark.diagnosis import auroc_cell, checkpoint_parser, load_trained, model_input
from anomalib_ext.models.rd4ad import RD4ADModel
from anomalib_ext.models.rstpm import RSTPMModel
from anomalib_ext.models.uniad import UniADModel

# Added to each covariance's diagonal, times the mean channel variance: PaDiM adds an absolute 0.01 to raw
# features; relative to the spread it stays as gentle on unit-length directions as on raw features.
REGULARISATION = 0.01
SMOOTHING = 4.0  # sigma of the Gaussian on every upsampled map, as RD4AD's official code (scipy, truncate 4)
SMOOTHING_KERNEL = 2 * int(4 * SMOOTHING + 0.5) + 1


@dataclass
class Features:
    """Teacher and student features per map (``N x C x h x w``), per image its label and mask.

    On the test split also the model's own map and image score, for the table's first row.
    """

    teacher: list[torch.Tensor]
    student: list[torch.Tensor]
    labels: torch.Tensor
    masks: torch.Tensor | None
    own_map: torch.Tensor | None = None
    own_score: torch.Tensor | None = None


def pyramids(model: torch.nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The teacher and student (or reconstructed) features whose distances make the model's maps, one per map."""
    torch_model = model.model
    if isinstance(torch_model, UniADModel):  # the aligned backbone features and their reconstruction
        features = torch_model.extract_features(images)
        return [features], [torch_model.reconstruct(features)]
    if isinstance(torch_model, RD4ADModel):  # teacher layers, and the student decoded from their bottleneck
        teacher, student = torch_model.features(images)
        return teacher, list(student)
    features = torch_model.features(images)  # RSTPM: pair 1's maps, then pair 2's
    return [*features.teacher1, *features.teacher2], [*features.student1, *features.student2]


def extract(model: torch.nn.Module, loader: torch.utils.data.DataLoader, *, model_output: bool = False) -> Features:
    """Run the teachers and students over ``loader``; with ``model_output``, the model's own forward too."""
    teacher: list[list[torch.Tensor]] = []
    student: list[list[torch.Tensor]] = []
    own_maps, own_scores, labels, masks = [], [], [], []
    with torch.no_grad():
        for batch in loader:
            images = model_input(model, batch)
            batch_teacher, batch_student = pyramids(model, images)
            teacher.append(batch_teacher)
            student.append(batch_student)
            if model_output:
                output = model.model(images)
                own_maps.append(output.anomaly_map)
                own_scores.append(output.pred_score.flatten())
            labels.extend(Path(path).parent.name != "good" for path in batch.image_path)
            masks.append(batch.gt_mask)
    has_masks = all(mask is not None for mask in masks)
    return Features(
        teacher=[torch.cat(layer) for layer in zip(*teacher, strict=True)],
        student=[torch.cat(layer) for layer in zip(*student, strict=True)],
        labels=torch.tensor(labels).long(),
        masks=torch.cat(masks).float() if has_masks else None,
        own_map=torch.cat(own_maps) if model_output else None,
        own_score=torch.cat(own_scores) if model_output else None,
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
    "1 - cos(t, s) (RD4AD's and RSTPM's)": lambda _train, test, layer: (
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


def distance_table(train: Features, test: Features, size: tuple[int, int]) -> str:
    """Markdown: one row per distance, one column per map and one for all maps summed; first the model's own map."""
    blur = GaussianBlur2d(kernel_size=(SMOOTHING_KERNEL, SMOOTHING_KERNEL), sigma=(SMOOTHING, SMOOTHING), channels=1)
    layers = range(len(test.teacher))
    header = " | ".join(f"map {layer + 1}" for layer in layers)
    lines = [f"| distance | {header} | all maps summed |", "|---|" + "---|" * (len(layers) + 1)]
    if test.own_map is not None:
        own = auroc_cell(test.own_map, test.labels, test.masks, test.own_score)
        lines.append("| the model's own map and score | " + " | " * len(layers) + f"{own} |")
    for name, distance in DISTANCES.items():
        maps = [
            blur(F.interpolate(distance(train, test, layer), size=size, mode="bilinear", align_corners=True))
            for layer in layers
        ]
        cells = [auroc_cell(layer_map, test.labels, test.masks) for layer_map in maps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {auroc_cell(sum(maps), test.labels, test.masks)} |")
    return "\n".join(lines)


def student_table(train: Features, test: Features) -> str:
    """Markdown per map: mean ``1 - cos(t, s)`` on each split, and the student's norm against the teacher's.

    Both models' losses constrain the student's direction only, so ``|s| / |t|`` is free: a Euclidean
    distance between the two would measure the scale as much as the fit.
    """

    def mean_cosine_distance(features: Features, layer: int, keep: torch.Tensor) -> str:
        distance = 1 - F.cosine_similarity(features.teacher[layer], features.student[layer], dim=1)
        return f"{distance[keep].mean():.3f}"

    every_image = torch.ones_like(train.labels, dtype=torch.bool)
    lines = [
        "| map | 1 - cos, training | 1 - cos, normal test | 1 - cos, defective test | student / teacher norm |",
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
    if not isinstance(model.model, RD4ADModel | RSTPMModel | UniADModel):
        parser.error(f"--model {args.model}: this diagnosis needs an RD4AD, RSTPM or UniAD checkpoint")
    train = extract(model, datamodule.train_dataloader())
    test = extract(model, datamodule.test_dataloader(), model_output=True)
    print(distance_table(train, test, (args.image_size, args.image_size)))
    print("\nHow closely the student follows the teacher (means over positions and images):\n")
    print(student_table(train, test))
    print(f"\n{len(train.labels)} training images made the statistics; {len(test.labels)} test images scored.")


if __name__ == "__main__":
    main()
