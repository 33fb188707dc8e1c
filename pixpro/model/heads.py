"""Per-pixel heads that run on gathered pixel vectors (N, C), never on whole feature maps."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class Projector(nn.Module):
    """Pointwise MLP (a 1x1-conv MLP applied to gathered pixels): Linear-BN-ReLU-Linear.

    (N, c_in) -> (N, c_out). Running it on the gathered pixels only is what keeps the head's
    cost proportional to the pairs, not to the map size.
    """

    def __init__(self, c_in: int, hidden: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(c_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, c_out),
        )

    def forward(self, pixels: Tensor) -> Tensor:
        return self.net(pixels)


def build_transform(dim: int, layers: int) -> nn.Module:
    """PixPro's g(): identity (0 layers), one linear map (1), or Linear-BN-ReLU-Linear (2)."""
    if layers == 0:
        return nn.Identity()
    if layers == 1:
        return nn.Linear(dim, dim)
    return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim))


def propagation_similarity(centre: Tensor, others: Tensor, gamma: float) -> Tensor:
    """s(x_i, x_j) = max(cos(x_i, x_j), 0) ** gamma.

    centre (..., D), others (..., K, D) -> (..., K).
    """
    cos = (F.normalize(others, dim=-1) @ F.normalize(centre, dim=-1).unsqueeze(-1)).squeeze(-1)
    return cos.clamp(min=0).pow(gamma)


def local_propagation(centre: Tensor, window: Tensor, window_transformed: Tensor, inside: Tensor,
                      gamma: float) -> Tensor:
    """y_i = sum_j s(x_i, x_j) g(x_j) over each pixel's window.

    centre (N, D); window, window_transformed (N, K, D); inside (N, K) bool masks positions
    clipped at the border. Returns (N, D). Cost O(N K D).
    """
    weights = propagation_similarity(centre, window, gamma) * inside  # (N, K)
    return (weights.unsqueeze(1) @ window_transformed).squeeze(1)  # (N, 1, K) @ (N, K, D)


def global_propagation(centre: Tensor, pixels: Tensor, pixels_transformed: Tensor, gamma: float) -> Tensor:
    """The original PixPro PPM over the whole map, evaluated at the pair pixels only.

    centre (B, P, D); pixels, pixels_transformed (B, HW, D) -> (B, P, D). Cost O(B P HW D):
    feasible for small maps only (ablations and tests).
    """
    cos = F.normalize(centre, dim=-1) @ F.normalize(pixels, dim=-1).transpose(1, 2)  # (B, P, HW)
    return cos.clamp(min=0).pow(gamma) @ pixels_transformed
