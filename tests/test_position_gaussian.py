"""PositionGaussian: streaming sums give the batch covariance, a relative ridge, PaDiM's Mahalanobis distance."""

from __future__ import annotations

import pytest
import torch

from anomalib_ext.components.position_gaussian import PositionGaussian


def _direct_distance(normal: torch.Tensor, test: torch.Tensor, regularisation: float) -> torch.Tensor:
    """The same Gaussian fitted on all samples at once with ``torch.cov``, in float64."""
    samples = normal.double().flatten(2).permute(2, 0, 1)  # P x N x C
    mean = samples.mean(dim=1)
    covariance = torch.stack([torch.cov(position.T) for position in samples])
    spread = torch.diagonal(covariance, dim1=1, dim2=2).mean(dim=1).view(-1, 1, 1)
    eye = torch.eye(normal.shape[1], dtype=torch.float64)
    precision = torch.linalg.inv(covariance + regularisation * spread * eye)
    offsets = test.double().flatten(2).permute(2, 0, 1) - mean[:, None]
    squared = torch.einsum("pnc,pcd,pnd->np", offsets, precision, offsets)
    return squared.sqrt().reshape(test.shape[0], 1, *test.shape[2:])


def test_streamed_fit_equals_a_direct_fit_with_a_relative_ridge() -> None:
    """Fitting in two batches equals ``torch.cov`` on all samples; the ridge scales with the features' variance.

    Assumes float32 features on the CPU; the reference runs in float64, so 1e-5 relative is float32 rounding.
    """
    torch.manual_seed(0)
    normal, test = torch.randn(40, 6, 3, 5), torch.randn(4, 6, 3, 5)
    for scale in (1.0, 1e-3):  # unit-residual-sized variances must not be swamped by the ridge
        gaussian = PositionGaussian(regularisation=0.01)
        gaussian.update(scale * normal[:25])
        gaussian.update(scale * normal[25:])
        gaussian.finish()
        expected = _direct_distance(scale * normal, scale * test, 0.01).float()
        torch.testing.assert_close(gaussian(scale * test), expected, rtol=1e-5, atol=1e-5)
    assert gaussian.mean.shape == (6, 15)
    assert gaussian.precision.shape == (15, 6, 6)


def test_unfitted_or_inconsistent_input_is_refused() -> None:
    """Scoring before a fit, fitting one image, mixing feature shapes and a non-positive ridge fail clearly."""
    gaussian = PositionGaussian()
    with pytest.raises(RuntimeError, match="no statistics"):
        gaussian(torch.randn(1, 4, 2, 2))
    gaussian.update(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian.finish()
    with pytest.raises(ValueError, match="same feature shape"):
        gaussian.update(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="regularisation"):
        PositionGaussian(regularisation=0)


def test_statistics_load_from_a_state_dict_of_another_size() -> None:
    """Like PaDiM's, the buffers resize on load, so a fresh module restores a fitted one from a checkpoint."""
    fitted = PositionGaussian()
    fitted.update(torch.randn(8, 3, 2, 2))
    fitted.finish()
    restored = PositionGaussian()
    restored.load_state_dict(fitted.state_dict())
    features = torch.randn(2, 3, 2, 2)
    assert restored.fitted
    torch.testing.assert_close(restored(features), fitted(features))


def test_a_checkpoint_without_statistics_loads_unfitted() -> None:
    """A state dict saved before a model had these statistics loads strictly, leaving them unfitted."""
    holder = torch.nn.Module()
    holder.weight = torch.nn.Parameter(torch.ones(2))
    holder.gaussian = PositionGaussian()
    holder.gaussian.update(torch.randn(3, 4, 2, 2))
    holder.gaussian.finish()
    holder.load_state_dict({"weight": torch.zeros(2)}, strict=True)
    assert not holder.gaussian.fitted
    assert torch.equal(holder.weight, torch.zeros(2))
