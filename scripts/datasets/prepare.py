"""Convert public defect datasets into the MVTec AD layout that ``anomalib_ext.data.MVTecStyle`` reads.

The images stay out of this repository (their licences are non-commercial); this script is how
they are made from a copy of the public repositories that host them::

    python scripts/datasets/prepare.py kolektor SOURCE datasets/kolektor
    python scripts/datasets/prepare.py tire SOURCE datasets/tire --commit bd3a0214
    python scripts/datasets/prepare.py screw SOURCE datasets/screw

``SOURCE`` is a checkout of the hosting repository or its bare git directory (then ``--commit``
picks the revision; the MVTec 3D-AD tire images exist only in commit ``bd3a0214`` of their host).

- ``kolektor``: KolektorSDD (github songpeixuan22/Unet-Defect-Detection-in-kolektorSSD,
  ``data/kosNN/PartK.jpg`` with ``PartK_label.bmp``; the duplicate ``kos13/kos08`` is ignored).
  A part is defective when its label has any non-zero pixel. Defect-free parts are split by a
  fixed rule: every 6th (in folder, part order) goes to ``test/good``, the rest to ``train/good``.
- ``tire``: MVTec 3D-AD ``tire``, RGB and ground truth only (github
  yagamieren09/Automated-Defect-Detection-System-using-AI-vision, commit ``bd3a0214``): the
  official train/test split; ``validation/good`` is left out.
- ``screw``: MVTec AD ``screw`` (github dungdao1995/SkipGanomaly-MVTECAD): its defective test
  images are flattened into ``test/1`` with clashing names renamed ``NNN(k).png``, so they cannot
  be paired with their 119 masks; they become ``test/defect`` with no ``ground_truth`` folder
  (image-level labels only: ``MVTecStyle`` then reports image metrics).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Generator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@contextmanager
def checkout(source: Path, commit: str, subfolder: str) -> Generator[Path, None, None]:
    """``source/subfolder`` of a checkout, or of ``commit`` extracted from a bare git directory."""
    if (source / subfolder).is_dir():
        yield source
        return
    if not (source / "HEAD").is_file():
        msg = f"{source} has no {subfolder}/ and is not a git directory."
        raise SystemExit(msg)
    git = ["git", f"--git-dir={source}"]
    # argument lists without a shell; the git directory and revision are the caller's own command-line arguments
    listed = subprocess.run(  # noqa: S603
        [*git, "ls-tree", "-r", "--name-only", commit, subfolder],
        check=True,
        capture_output=True,
    )
    # images only: the hosts also hold point clouds (.tiff), which the fetched copy may lack
    paths = [p for p in listed.stdout.decode().splitlines() if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    archive = subprocess.run(  # noqa: S603
        [*git, "archive", "--format=tar", commit, *paths],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryDirectory() as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(scratch, filter="data")
        yield Path(scratch)


def binary_mask(path: Path) -> Image.Image:
    """A 0/255 single-channel mask from any label image."""
    values = np.asarray(Image.open(path).convert("L"))
    return Image.fromarray(((values > 0) * 255).astype(np.uint8))


def kolektor(source: Path, target: Path, commit: str) -> None:
    """KolektorSDD: parts with a labelled pixel to ``test/defect`` with masks, every 6th good part to ``test/good``."""
    with checkout(source, commit, "data") as root:
        parts = sorted(
            image
            for folder in sorted((root / "data").glob("kos*"))
            if folder.is_dir()
            for image in folder.glob("Part*.jpg")
        )
        good_index = 0
        for image in parts:
            label = image.with_name(f"{image.stem}_label.bmp")
            name = f"{image.parent.name}_{image.stem}"
            mask = binary_mask(label)
            if np.asarray(mask).any():
                copy_image(image, target / "test" / "defect" / f"{name}.png")
                mask.save(mkparent(target / "ground_truth" / "defect" / f"{name}_mask.png"))
            else:
                split = "test" if good_index % 6 == 5 else "train"
                copy_image(image, target / split / "good" / f"{name}.png")
                good_index += 1


def tire(source: Path, target: Path, commit: str) -> None:
    """MVTec 3D-AD ``tire``: the RGB images in their official train/test split, ground truth as 0/255 masks."""
    base = "dataset/mvtec_3d/tire"
    with checkout(source, commit, base) as root:
        tire_root = root / base
        for image in sorted((tire_root / "train" / "good" / "rgb").glob("*.png")):
            copy_image(image, target / "train" / "good" / image.name)
        for defect in sorted(p for p in (tire_root / "test").iterdir() if p.is_dir()):
            for image in sorted((defect / "rgb").glob("*.png")):
                copy_image(image, target / "test" / defect.name / image.name)
                if defect.name != "good":
                    binary_mask(defect / "gt" / image.name).save(
                        mkparent(target / "ground_truth" / defect.name / f"{image.stem}_mask.png"),
                    )


def screw(source: Path, target: Path, commit: str) -> None:
    """MVTec AD ``screw`` as its host flattened it: ``test/0`` to ``test/good``, ``test/1`` to ``test/defect``."""
    with checkout(source, commit, "data/screw") as root:
        screw_root = root / "data" / "screw"
        for image in sorted((screw_root / "train" / "good").glob("*.png")):
            copy_image(image, target / "train" / "good" / image.name)
        for folder, label in (("0", "good"), ("1", "defect")):
            for image in sorted((screw_root / "test" / folder).glob("*.png")):
                name = image.name.replace("(", "_").replace(")", "")
                copy_image(image, target / "test" / label / name)


def mkparent(path: Path) -> Path:
    """Create the folders above ``path`` and return ``path``, so a file can be written in one expression."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def copy_image(source: Path, target: Path) -> None:
    """Copy a PNG as it is; re-encode anything else as PNG (lossless from here on)."""
    mkparent(target)
    if source.suffix.lower() == ".png":
        shutil.copyfile(source, target)
    else:
        Image.open(source).save(target)


CONVERTERS = {"kolektor": kolektor, "tire": tire, "screw": screw}


def main() -> None:
    """Convert the dataset named on the command line into a new, empty folder and print its file counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(CONVERTERS))
    parser.add_argument("source", type=Path, help="checkout or bare git directory of the hosting repository")
    parser.add_argument("target", type=Path, help="new MVTec-layout folder")
    parser.add_argument("--commit", default="HEAD", help="revision to read from a bare git directory")
    args = parser.parse_args()
    if args.target.exists() and any(args.target.iterdir()):
        msg = f"{args.target} exists and is not empty: choose a new folder (nothing was overwritten)."
        raise SystemExit(msg)
    CONVERTERS[args.dataset](args.source.expanduser(), args.target, args.commit)
    counts = {str(p.relative_to(args.target)): len(list(p.iterdir())) for p in sorted(args.target.glob("*/*"))}
    print(f"{args.dataset} -> {args.target}: {counts}")


if __name__ == "__main__":
    main()
