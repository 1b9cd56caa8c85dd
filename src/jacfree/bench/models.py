"""Models that only the benchmarks build (the library's own models live in its packages)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLPScoreNet"]


class MLPScoreNet(nn.Module):
    r"""A score network ``s(x) = MLP(x) ∈ R^D`` (``D → H → … → H → D``, smooth activation).

    The MLP score model of the paper's implicit-encoder VAE/WAE experiments (there on the latent,
    d = 32, width 256), at D = 784 here so that it matches the MLP energy's size. Row-wise, so
    the FD batch ``[x + v, x − v]`` may be concatenated.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (1000, 1000)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Softplus()]
            width = h
        layers.append(nn.Linear(width, dim))
        self.dim = dim
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
