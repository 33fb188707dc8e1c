"""Per-pixel heads that run on gathered pixel vectors (N, C), never on whole feature maps."""

from __future__ import annotations

from torch import Tensor, nn


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


def local_propagation(centre: Tensor, window: Tensor, window_transformed: Tensor, inside: Tensor,
                      gamma: float) -> Tensor:
    """y_i = sum_j s(x_i, x_j) g(x_j), s = max(cos, 0) ** gamma, over each pixel's window.

    centre (N, D) and window (N, K, D) must be unit length (cos is then a dot product, and the
    caller normalises each distinct pixel once instead of every window copy);
    window_transformed (N, K, D) holds g(x_j); inside (N, K) bool masks positions clipped at the
    border. Returns (N, D). Cost O(N K D).
    """
    cos = (window @ centre.unsqueeze(-1)).squeeze(-1)  # (N, K)
    weights = cos.clamp(min=0).pow(gamma) * inside
    return (weights.unsqueeze(1) @ window_transformed).squeeze(1)  # (N, 1, K) @ (N, K, D)


def global_propagation(centre: Tensor, pixels: Tensor, pixels_transformed: Tensor, gamma: float) -> Tensor:
    """The original PixPro PPM over the whole map, evaluated at the pair pixels only.

    centre (B, P, D) and pixels (B, HW, D) unit length; pixels_transformed (B, HW, D) ->
    (B, P, D). Cost O(B P HW D): feasible for small maps only (ablations and tests).
    """
    cos = centre @ pixels.transpose(1, 2)  # (B, P, HW)
    return cos.clamp(min=0).pow(gamma) @ pixels_transformed
