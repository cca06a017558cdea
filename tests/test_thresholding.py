"""The F1-adaptive threshold lies between two scores, so a last-bit change of one score flips no label.

The scores are the ones of the DDP failure this fixes (RD4AD on the brick texture, 10 test
images): the same weights scored ``stain/001`` 0x1.7ab6acp+1 alone in a rank's tail batch
(2-rank DDP) and 0x1.7ab6aep+1, one ulp higher, next to ``stain/000`` in one process. anomalib's
threshold was exactly ``stain/001``'s DDP score, so image F1 was 0.667 under DDP and 0.75 in one
process.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from anomalib.metrics import F1AdaptiveThreshold
from anomalib.post_processing import PostProcessor

from anomalib_ext.components.thresholding import MidpointF1AdaptiveThreshold, MidpointPostProcessor, midpoint_threshold

# image: (score under 2-rank DDP, score in one process, label); both runs on the same weights
SCORES = {
    "contamination/000": ("0x1.876630p+1", "0x1.876630p+1", 1),
    "contamination/001": ("0x1.8ce30cp+1", "0x1.8ce30cp+1", 1),
    "good/000": ("0x1.85efbap+1", "0x1.85efbap+1", 0),
    "good/001": ("0x1.85dc4ep+1", "0x1.85dc4ep+1", 0),
    "good/002": ("0x1.7d0bdep+1", "0x1.7d0bdep+1", 0),
    "good/003": ("0x1.7b3f42p+1", "0x1.7b3f42p+1", 0),
    "scratch/000": ("0x1.7ba122p+1", "0x1.7ba122p+1", 1),
    "scratch/001": ("0x1.7fba8cp+1", "0x1.7fba8cp+1", 1),
    "stain/000": ("0x1.800360p+1", "0x1.800362p+1", 1),
    "stain/001": ("0x1.7ab6acp+1", "0x1.7ab6aep+1", 1),
}
DDP = torch.tensor([float.fromhex(ddp) for ddp, _, _ in SCORES.values()])
SINGLE = torch.tensor([float.fromhex(single) for _, single, _ in SCORES.values()])
LABELS = torch.tensor([label for _, _, label in SCORES.values()])


def image_batch(scores: torch.Tensor, labels: torch.Tensor = LABELS) -> SimpleNamespace:
    """The fields anomalib's post-processor reads and writes, for image-level scores only."""
    return SimpleNamespace(
        pred_score=scores.clone(),
        gt_label=labels,
        anomaly_map=None,
        gt_mask=None,
        pred_label=None,
        pred_mask=None,
    )


def validate(post_processor: PostProcessor, scores: torch.Tensor = DDP) -> PostProcessor:
    """Compute the threshold and min/max from one validation epoch, as during ``fit``."""
    post_processor.on_validation_batch_end(None, None, image_batch(scores))  # type: ignore[arg-type]
    post_processor.on_validation_epoch_end(None, None)  # type: ignore[arg-type]
    return post_processor


def labels_and_f1(post_processor: PostProcessor, scores: torch.Tensor) -> tuple[list[bool], float]:
    """Predicted labels and image F1 of a test pass over ``scores``."""
    batch = image_batch(scores)
    post_processor.post_process_batch(batch)  # type: ignore[arg-type]
    predicted = batch.pred_label.bool()
    true_positives = int((predicted & (LABELS == 1)).sum())
    wrong = int((predicted != (LABELS == 1)).sum())
    return predicted.tolist(), 2 * true_positives / (2 * true_positives + wrong)


def test_anomalib_threshold_sits_on_a_score_and_one_ulp_flips_a_label() -> None:
    """Why we deviate: if this fails, anomalib changed its threshold and ours may be dropped."""
    post_processor = validate(PostProcessor())
    assert float(post_processor.image_threshold) == float(DDP.min())  # stain/001's DDP score
    _, f1_ddp = labels_and_f1(post_processor, DDP)
    _, f1_single = labels_and_f1(post_processor, SINGLE)
    assert f1_ddp == pytest.approx(10 / 15)  # stain/001 on the threshold: "score > threshold" says normal
    assert f1_single == pytest.approx(12 / 16)  # one ulp above: anomalous, as the F1 optimum assumed


def test_midpoint_gives_the_same_labels_in_both_runs_and_the_f1_optimum() -> None:
    """On the DDP failure's scores, the midpoint threshold labels both runs alike, at the F1 optimum."""
    post_processor = validate(MidpointPostProcessor())
    labels_ddp, f1_ddp = labels_and_f1(post_processor, DDP)
    labels_single, f1_single = labels_and_f1(post_processor, SINGLE)
    assert labels_ddp == labels_single == [True] * len(SCORES)  # the F1 optimum: every image anomalous
    assert f1_ddp == f1_single == pytest.approx(12 / 16)


def test_midpoint_labels_survive_a_few_ulps_on_every_score() -> None:
    """Moving every score 8 ulps up or down changes no label under the midpoint threshold."""
    post_processor = validate(MidpointPostProcessor())
    expected, _ = labels_and_f1(post_processor, DDP)
    for direction in (float("inf"), float("-inf")):
        moved = DDP.clone()
        for _ in range(8):
            moved = torch.nextafter(moved, torch.full_like(moved, direction))
        assert labels_and_f1(post_processor, moved)[0] == expected


def test_threshold_lies_halfway_to_the_next_lower_score() -> None:
    """Where anomalib puts the threshold on a score (0.8), ours sits halfway to the next lower one (0.5)."""
    scores, labels = torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])
    ours = MidpointF1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    theirs = F1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    for metric in (ours, theirs):
        metric.update(image_batch(scores, labels))
    assert float(theirs.compute()) == pytest.approx(0.8)
    assert float(ours.compute()) == pytest.approx(0.5)


def test_threshold_on_the_lowest_score_mirrors_the_gap_above() -> None:
    """A threshold on the lowest score moves down by half the gap to the next score up."""
    scores = torch.tensor([1.0, 2.0, 3.0])
    assert float(midpoint_threshold(scores, torch.tensor(1.0))) == pytest.approx(0.5)


def test_adjacent_floats_keep_the_partition() -> None:
    """With no float between two scores the threshold is the lower one: ``>`` still separates them."""
    high = torch.tensor(1.0)
    low = torch.nextafter(high, torch.tensor(0.0))
    threshold = midpoint_threshold(torch.stack([low, high, torch.tensor(2.0)]), high)
    assert low <= threshold < high


def test_single_distinct_score_is_left_alone() -> None:
    """With one distinct score there is no gap, and the threshold stays where anomalib put it."""
    assert float(midpoint_threshold(torch.full((4,), 3.0), torch.tensor(3.0))) == 3.0


@pytest.mark.parametrize("labels", [torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)])
def test_one_class_fallbacks_are_anomalibs(labels: torch.Tensor) -> None:
    """With only normal or only anomalous labels, the threshold is anomalib's own, bit for bit."""
    scores = torch.tensor([0.1, 0.2, 0.8, 0.9])
    ours = MidpointF1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    theirs = F1AdaptiveThreshold(fields=["pred_score", "gt_label"])
    for metric in (ours, theirs):
        metric.update(image_batch(scores, labels))
    assert float(ours.compute()) == float(theirs.compute())


def test_pixel_threshold_is_a_midpoint_too() -> None:
    """The post-processor's pixel threshold is a midpoint as well."""
    anomaly_map = torch.tensor([[[[0.1, 0.2], [0.8, 0.9]]]])
    gt_mask = torch.tensor([[[[0, 0], [1, 1]]]])
    post_processor = MidpointPostProcessor()
    batch = SimpleNamespace(pred_score=None, gt_label=None, anomaly_map=anomaly_map, gt_mask=gt_mask)
    post_processor.on_validation_batch_end(None, None, batch)  # type: ignore[arg-type]
    post_processor.on_validation_epoch_end(None, None)  # type: ignore[arg-type]
    assert float(post_processor.pixel_threshold) == pytest.approx(0.5)


def test_checkpoints_are_interchangeable_with_anomalibs() -> None:
    """Same buffers: a checkpoint of either post-processor loads into the other."""
    trained = validate(MidpointPostProcessor())
    plain = PostProcessor()
    plain.load_state_dict(trained.state_dict())
    assert torch.equal(plain.image_threshold, trained.image_threshold)
    MidpointPostProcessor().load_state_dict(validate(PostProcessor()).state_dict())
