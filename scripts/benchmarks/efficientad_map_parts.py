r"""Which part of a trained EfficientADOffline's map ranks the test set: M_ST, M_AE, and how they are combined.

EfficientAD adds the student-teacher map M_ST and the autoencoder map M_AE after normalising each with its
(q_0.9, q_0.995) quantiles on held-out training images. This scores one trained benchmark row (its checkpoint) four
ways on the test split, from the raw model outputs as the benchmark's curve does:

* the checkpoint's quantiles: the model as tested;
* the initial quantiles ``(0, 0.1)`` for both maps: M_ST / 2 + M_AE / 2 without normalisation;
* M_ST alone and M_AE alone, each normalised with its own quantiles.

    python scripts/benchmarks/efficientad_map_parts.py --data datasets/textures/grass \
        --checkpoint /tmp/anomalib_ext_efficientad_backbone/grass/<row>/EfficientADOffline/.../model.ckpt \
        --model-args '{"teacher_backbone": "efficientnet_lite0", "image_size": 128, "model_size": "small"}'
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from anomalib_ext.benchmark.cli import parse_args
from anomalib_ext.benchmark.runner import load_trained
from anomalib_ext.callbacks.progress import score_test_set

# a quantile range so wide that the map it normalises adds nothing
SILENT = torch.tensor([0.0, 1e9])


def main() -> None:
    """Load the row's weights, then print image (and pixel) AUROC for each way of combining the maps."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the row's MVTec-layout category folder")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the row's weights/lightning/model.ckpt")
    parser.add_argument("--image-size", default="128")
    parser.add_argument("--model-args", default="{}", help="the row's --model-args (JSON)")
    options = parser.parse_args()
    if not options.checkpoint.is_file():
        parser.error(f"--checkpoint {options.checkpoint} is not a file")

    row = ["--model", "EfficientADOffline", "--image-size", options.image_size, "--batch-size", "1"]
    args = parse_args([*row, "--num-workers", "0", "--data", options.data, "--model-args", options.model_args])
    args.model = args.models[0]
    model, datamodule = load_trained(args, options.checkpoint)
    datamodule.setup()
    q_st, q_ae = model.model.q_st.clone(), model.model.q_ae.clone()
    print(f"checkpoint quantiles: M_ST {q_st.tolist()}, M_AE {q_ae.tolist()}")
    initial = torch.tensor([0.0, 0.1])
    for name, st, ae in (
        ("the checkpoint's quantiles (as tested)", q_st, q_ae),
        ("initial (0, 0.1) for both", initial, initial),
        ("M_ST alone, normalised", q_st, SILENT),
        ("M_AE alone, normalised", SILENT, q_ae),
    ):
        model.model.set_map_quantiles(st, ae)
        image, pixel = score_test_set(model, datamodule.test_dataloader())
        pixel_text = f" / pixel AUROC {100 * pixel:.1f}" if pixel is not None else ""
        print(f"{name}: image AUROC {100 * image:.1f}{pixel_text}", flush=True)


if __name__ == "__main__":
    main()
