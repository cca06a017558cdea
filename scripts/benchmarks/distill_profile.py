"""Where EfficientAD's offline teacher distillation spends a step: data, frozen target, PDN forward/backward/Adam.

Mirrors ``distill_teacher``'s loop (``anomalib_ext.models.efficientad.teacher``) for a few steps and prints
milliseconds per step of each part, so the cost of the paper's 60,000 steps on this machine can be read off
(the target is normalised with the batch's statistics instead of precomputed channel statistics: same cost):

    python scripts/benchmarks/distill_profile.py --steps 6 --batch-size 16 --image-size 256
    python scripts/benchmarks/distill_profile.py --precision bf16 --channels-last   # distill-teacher's options
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import DataLoader

from anomalib_ext.components.natural_images import NaturalImages, endless
from anomalib_ext.models.efficientad.teacher import DISTILL_PRECISIONS, DistillationTarget, distill_autocast
from anomalib_ext.models.efficientad.torch_model import make_pdn


def main() -> None:
    """Time ``--steps`` distillation steps after one warm-up step; print the mean of each part."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=256, help="PDN input side (the target sees twice that)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", choices=DISTILL_PRECISIONS, default="32")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    autocast = distill_autocast(args.precision, "cpu")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    target_net = DistillationTarget(args.backbone, None, None, allow_download=False).to(memory_format=memory_format)
    batches = endless(
        DataLoader(NaturalImages(None, image_size=2 * args.image_size, augment="heavy"), batch_size=args.batch_size),
    )
    pdn = make_pdn("small", target_net.out_channels, padding=True).to(memory_format=memory_format).train()
    optimizer = torch.optim.Adam(pdn.parameters(), lr=1e-4, weight_decay=1e-5)
    sums = dict.fromkeys(("data", "target forward", "PDN forward", "backward", "Adam"), 0.0)
    load = os.getloadavg()[0]
    for step in range(args.steps + 1):
        marks = [time.perf_counter()]
        big = next(batches)
        small = F.interpolate(big, size=(args.image_size, args.image_size), mode="bilinear", antialias=True)
        big, small = big.contiguous(memory_format=memory_format), small.contiguous(memory_format=memory_format)
        marks.append(time.perf_counter())
        with autocast:
            target = target_net(big).float()
        marks.append(time.perf_counter())
        with autocast:
            prediction = pdn(small).float()
        loss = F.mse_loss(prediction, (target - target.mean()) / target.std())
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if step:  # the first step warms up oneDNN and the data pipeline
            for key, start, end in zip(sums, marks, marks[1:], strict=False):
                sums[key] += end - start
    total = sum(sums.values()) / args.steps
    cells = " | ".join(f"{key} {1000 * value / args.steps:.0f} ms" for key, value in sums.items())
    setting = f"{args.precision}{', channels-last' if args.channels_last else ''}"
    run = f"{args.backbone}, PDN {args.image_size} px, batch {args.batch_size}, {setting}"
    print(f"{run}: {cells} | step {1000 * total:.0f} ms")
    hours = 60_000 * total / 3600
    print(f"60,000 steps (the paper's): {hours:.1f} h; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
