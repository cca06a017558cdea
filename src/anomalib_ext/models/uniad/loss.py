"""UniAD training loss: mean squared error between reconstructed and input features.

The official ``FeatureMSELoss`` (weight 1.0) compares the aligned backbone features with the
transformer's reconstruction; the (frozen) features are the target.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812


class UniADLoss(nn.Module):
    """``mse(reconstruction, features)`` averaged over batch, channels and grid."""

    def forward(self, features: Tensor, reconstruction: Tensor) -> Tensor:  # noqa: PLR6301  # nn.Module.forward
        """Return the scalar loss."""
        return F.mse_loss(reconstruction, features.detach())
