"""FID- and CLIP-style scores computed with a probe classifier instead of Inception and CLIP.

The paper compares methods by the Fréchet Inception Distance between renders and the
prior's own images, and by CLIP's agreement with the prompt. On the toy world a small
classifier trained on ground-truth renders (a colour head and a shape head over shared
features) plays both parts:

* ``probe_fid``: :func:`frechet_distance` between the probe's penultimate features
  (:func:`probe_features`, the input of its heads) of two image sets (Heusel et al. 2017,
  "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium");
* ``probe_clip``: :func:`probe_clip`, the mean probability the probe gives to the
  attributes the prompt names.
"""

from __future__ import annotations

import torch
from torch import nn


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues
    below 0 from rounding are clamped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0.0).sqrt()) @ vectors.T


def frechet_distance_gaussians(
    mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor
) -> float:
    """The Fréchet (2-Wasserstein squared) distance between two Gaussians,

        |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),

    in float64, with the trace of the square root taken from the eigenvalues of the
    symmetric matrix ``S_a^1/2 S_b S_a^1/2`` (stable where ``sqrtm(S_a S_b)`` of a
    non-symmetric product is not, and exact for singular covariances).

    Args:
        mean_a, mean_b: ``(D,)`` means.
        cov_a, cov_b: ``(D, D)`` covariances.
    """
    mean_a, mean_b, cov_a, cov_b = (v.double() for v in (mean_a, mean_b, cov_a, cov_b))
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = 0.5 * (middle + middle.T)
    cross = torch.linalg.eigvalsh(middle).clamp_min(0.0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + torch.trace(cov_a + cov_b) - 2.0 * cross
    return max(float(distance), 0.0)


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features (float64;
    zero covariance for one sample)."""
    x = features.double()
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(x.shape[0] - 1, 1)
    return mean, cov


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets.

    Args:
        a: ``(N, D)`` features of one set.
        b: ``(M, D)`` features of the other.

    Raises:
        ValueError: empty sets or different feature sizes.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty (N, D) sets, got {tuple(a.shape)}, {tuple(b.shape)}")
    return frechet_distance_gaussians(*gaussian_fit(a), *gaussian_fit(b))


@torch.no_grad()
def probe_features(
    probe: nn.Module, images: torch.Tensor, head: str = "color", batch: int = 256
) -> torch.Tensor:
    """The probe's penultimate features: the input of its ``head`` layer.

    Args:
        probe: a classifier whose ``forward(images)`` feeds its features to ``head``.
        images: ``(N, 3, S, S)`` images as the probe takes them.
        head: the name of a final layer of the probe.
        batch: images per forward pass.

    Returns:
        ``(N, D)`` features.
    """
    captured: list[torch.Tensor] = []
    hook = probe.get_submodule(head).register_forward_pre_hook(
        lambda module, inputs: captured.append(inputs[0].detach().flatten(1))
    )
    try:
        for first in range(0, images.shape[0], batch):
            probe(images[first : first + batch])
    finally:
        hook.remove()
    return torch.cat(captured)


@torch.no_grad()
def probe_probabilities(
    probe: nn.Module, images: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, ...]:
    """Softmax probabilities of each of the probe's heads, e.g. ``(N, colours)`` and
    ``(N, shapes)``, for ``(N, 3, S, S)`` images."""
    outputs = [probe(images[first : first + batch]) for first in range(0, len(images), batch)]
    return tuple(torch.cat(head).softmax(-1) for head in zip(*outputs, strict=True))


def probe_clip(probabilities: tuple[torch.Tensor, ...], named: tuple[int | None, ...]) -> float:
    """The CLIP-score analogue: the mean probability of the prompt's named attributes.

    Args:
        probabilities: per head, ``(N, classes)`` probabilities of ``N`` images
            (:func:`probe_probabilities`).
        named: per head, the class the prompt names, or ``None`` where it names none
            ("a red object" names a colour, not a shape).

    Returns:
        The mean over images and named attributes, in [0, 1].

    Raises:
        ValueError: when the prompt names nothing.
    """
    hits = [p[:, index] for p, index in zip(probabilities, named, strict=True) if index is not None]
    if not hits:
        raise ValueError("the prompt names no attribute the probe knows")
    return float(torch.stack(hits).double().mean())
