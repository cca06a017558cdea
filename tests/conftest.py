"""Shared fixtures: no network, few threads, a tiny real-texture dataset, the MTD path."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anomalib_ext import RD4AD
    from anomalib_ext.data import MVTecStyle

MTD_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mtd"
LOOPBACK_PREFIXES = ("127.", "::1", "localhost")

torch.set_num_threads(min(2, os.cpu_count() or 1))


class NetworkAccessError(RuntimeError):
    """A test tried to open a connection to a non-loopback address."""


def _is_loopback(address: object) -> bool:
    if isinstance(address, tuple) and address:
        return str(address[0]).startswith(LOOPBACK_PREFIXES)
    return isinstance(address, str | bytes)  # AF_UNIX paths


@pytest.fixture(autouse=True, scope="session")
def forbid_network() -> Iterator[None]:
    """Fail any test that connects anywhere but loopback (hub downloads, telemetry, ...)."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def guarded_connect(self: socket.socket, address: object) -> None:
        if not _is_loopback(address):
            msg = f"test tried to connect to {address!r}"
            raise NetworkAccessError(msg)
        return original_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: object) -> int:
        if not _is_loopback(address):
            msg = f"test tried to connect to {address!r}"
            raise NetworkAccessError(msg)
        return original_connect_ex(self, address)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect = original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = original_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def texture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny MVTec-style categories (brick, grass) at 64 px, built from scikit-image photos."""
    from anomalib_ext.data import make_texture_dataset

    return make_texture_dataset(
        tmp_path_factory.mktemp("textures"),
        categories=("brick", "grass"),
        image_size=64,
        n_train=8,
        n_test_good=4,
        n_test_per_defect=2,
    )


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for a test: with 2 cores shared by several jobs, 2 threads spin-wait (~10x slower).

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def exported_rd4ad(tmp_path_factory: pytest.TempPathFactory) -> tuple[RD4AD, Path]:
    """An untrained RD4AD (offline Lite0 teacher, 64 px) and its fp32 OpenVINO export, shared by the deploy tests.

    One export per session: it is the slowest step of the fast tests that need one.
    """
    from anomalib_ext import RD4AD
    from anomalib_ext.deploy import export_openvino

    model = RD4AD(
        backbone="efficientnet_lite0",
        layers=("blocks.1", "blocks.2", "blocks.4"),
        pre_processor=RD4AD.configure_pre_processor(image_size=(64, 64)),
        visualizer=False,
    ).eval()
    return model, export_openvino(model, tmp_path_factory.mktemp("export"), 64)


@pytest.fixture
def tiny_datamodule(texture_root: Path) -> MVTecStyle:
    """The brick category at 64 px with batch 4, no worker processes."""
    from anomalib_ext.data import MVTecStyle

    return MVTecStyle(texture_root / "brick", image_size=64, train_batch_size=4, eval_batch_size=4, num_workers=0)


requires_mtd = pytest.mark.skipif(not MTD_ROOT.is_dir(), reason=f"MTD dataset not found at {MTD_ROOT}")
