"""An analytic Gaussian-mixture prior whose eps is exact in closed form.

Each prompt names a mixture over a shared table of isotropic Gaussian components
``N(mu_k, s_k^2 I)`` in the model input space. Under the forward process the noisy
marginal is again a mixture, ``sum_k pi_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``, so
the ideal denoiser is

    eps(x_t) = -sigma * grad log p_t(x_t)
             = sigma * sum_k r_k(x_t) (x_t - alpha mu_k) / (alpha^2 s_k^2 + sigma^2),

with ``r_k`` the posterior responsibilities. This prior is the oracle for tests and for the
2D playground: its samples and its mode weights are known exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from cfd3d.diffusion.schedule import NoiseSchedule, make_schedule
from cfd3d.errors import ConfigError
from cfd3d.priors.base import Prior


@dataclass(frozen=True)
class GaussianMixture:
    """Components shared by all prompts.

    Attributes:
        means: ``(K, C, h, w)`` component means in the prior's input space.
        stds: ``(K,)`` isotropic standard deviations.
        names: ``K`` component names (e.g. "red square").
    """

    means: torch.Tensor
    stds: torch.Tensor
    names: tuple[str, ...]


class GaussianMixturePrior(Prior):
    """A pixel prior that is an exact Gaussian mixture per prompt.

    Args:
        mixture: the shared components.
        prompts: prompt -> ``(K,)`` mixture weights over the components (zeros allowed).
            The empty prompt ``""`` is the unconditional distribution; if absent it is the
            average of the prompts' mixtures.
        schedule: noise schedule (default: Stable Diffusion's scaled-linear).
    """

    def __init__(
        self,
        mixture: GaussianMixture,
        prompts: Mapping[str, Sequence[float]],
        schedule: NoiseSchedule | None = None,
    ) -> None:
        self.mixture = mixture
        self.schedule = schedule or make_schedule("scaled_linear")
        self.input_shape = tuple(mixture.means.shape[1:])  # type: ignore[assignment]
        self.image_size = self.input_shape[1:]  # type: ignore[assignment]
        weights = {p: torch.as_tensor(w, dtype=torch.float64) for p, w in prompts.items()}
        for prompt, w in weights.items():
            if w.shape != mixture.stds.shape or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"bad mixture weights for prompt '{prompt}': {w.tolist()}")
        if "" not in weights:
            weights[""] = torch.stack([w / w.sum() for w in weights.values()]).mean(0)
        self.weights = {p: w / w.sum() for p, w in weights.items()}

    @property
    def prompts(self) -> list[str]:
        """The prompts this prior knows (without the unconditional ``""``)."""
        return sorted(p for p in self.weights if p)

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, K)`` log mixture weights (``-inf`` for absent components)."""
        unknown = [p for p in prompts if p not in self.weights]
        if unknown:
            raise ConfigError(
                f"the Gaussian-mixture prior does not know the prompt '{unknown[0]}'; "
                f"known prompts: {', '.join(repr(p) for p in self.prompts)}"
            )
        return torch.stack([self.weights[p].log() for p in prompts])

    def eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        embedding: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(x_t.device))
        alpha = alpha.to(x_t.dtype)[:, None]
        sigma = sigma.to(x_t.dtype)[:, None]
        x = x_t.flatten(1)
        mu = self.mixture.means.flatten(1).to(x)
        dim = x.shape[1]
        var = alpha**2 * self.mixture.stds.to(x)[None] ** 2 + sigma**2  # (B, K)
        sq_dist = (
            (x * x).sum(1, keepdim=True) - 2 * alpha * (x @ mu.T) + alpha**2 * (mu * mu).sum(1)
        ).clamp_min(0.0)
        logits = embedding.to(x) - 0.5 * dim * var.log() - 0.5 * sq_dist / var
        resp_over_var = torch.softmax(logits, dim=1) / var  # (B, K)
        eps = sigma * (x * resp_over_var.sum(1, keepdim=True) - alpha * (resp_over_var @ mu))
        return eps.view_as(x_t)

    @torch.no_grad()
    def sample(self, prompt: str, n: int, generator: torch.Generator | None = None):
        """Exact samples ``(n, C, h, w)`` and their component indices ``(n,)``."""
        weights = self.embed([prompt])[0].exp()
        comp = torch.multinomial(weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, *self.input_shape), generator=generator, dtype=torch.float64)
        means = self.mixture.means[comp].to(torch.float64)
        return means + self.mixture.stds[comp].to(torch.float64)[:, None, None, None] * noise, comp

    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest component of each ``z`` and the distance in units of its std.

        Returns:
            ``(B,)`` component indices and ``(B,)`` distances ``|z - mu_k| / (s_k sqrt(D))``
            (a true sample of component k gives about 1).
        """
        flat = z.flatten(1).to(torch.float64)
        mu = self.mixture.means.flatten(1).to(flat)
        dist = torch.cdist(flat, mu)
        scaled = dist / (self.mixture.stds.to(flat)[None] * math.sqrt(flat.shape[1]))
        comp = dist.argmin(1)
        return comp, scaled.gather(1, comp[:, None])[:, 0]


def shapes_mixture(size: int = 16, std: float = 0.1) -> GaussianMixture:
    """Three flat-colour images on white: a red square, a blue disc, a green triangle.

    Returns means in [-1, 1] pixel space, shape ``(3, 3, size, size)``.
    """
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(-coords, coords, indexing="ij")
    square = (x.abs() < 0.55) & (y.abs() < 0.55)
    disc = x**2 + y**2 < 0.6**2
    triangle = (y > -0.55) & (y < 0.65 - 2.2 * x.abs())
    colours = {"red": (0.9, 0.15, 0.15), "blue": (0.15, 0.3, 0.9), "green": (0.15, 0.7, 0.2)}
    means = []
    for mask, colour in zip((square, disc, triangle), colours.values(), strict=True):
        image = torch.ones(3, size, size, dtype=torch.float64)
        for c in range(3):
            image[c][mask] = colour[c]
        means.append(image * 2 - 1)
    return GaussianMixture(
        means=torch.stack(means),
        stds=torch.full((3,), std, dtype=torch.float64),
        names=("red square", "blue disc", "green triangle"),
    )


def shapes_prior(size: int = 16, std: float = 0.1) -> GaussianMixturePrior:
    """The built-in playground prior.

    Prompts: "a red square", "a blue disc", "a green triangle" (one component each) and
    "a simple shape" (all three with weights 0.5 / 0.3 / 0.2, the mode-coverage test).
    """
    return GaussianMixturePrior(
        shapes_mixture(size, std),
        {
            "a red square": [1.0, 0.0, 0.0],
            "a blue disc": [0.0, 1.0, 0.0],
            "a green triangle": [0.0, 0.0, 1.0],
            "a simple shape": [0.5, 0.3, 0.2],
        },
    )
