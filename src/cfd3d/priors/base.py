"""The prior protocol: anything that predicts eps for ``(x_t, t, prompt)``.

Analytic, embedded and Stable Diffusion priors all implement :class:`Prior`, so the update
rules and the distillation loop never know which one they drive. A prior works in its own
*input space* ``z`` (pixels in [-1, 1] for pixel priors, VAE latents for latent priors);
:meth:`Prior.encode` maps rendered images in [0, 1] there, with gradient.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cfd3d.diffusion.guidance import classifier_free_guidance, perp_neg_guidance
from cfd3d.diffusion.schedule import NoiseSchedule


@dataclass(frozen=True)
class Condition:
    """Prompt conditioning for a batch of ``B`` inputs.

    Attributes:
        cond: ``(B, ...)`` embeddings of the prompts.
        uncond: ``(B, ...)`` embeddings of the negative prompt (the empty prompt, i.e. the
            unconditional branch, when no negative prompt is given).
        prompts: the ``B`` prompts, for logging.
        perp_neg: Perp-Neg negatives, ``(embedding (B, ...), weight (B,))`` pairs; empty
            for plain classifier-free guidance.
        cameras: ``(B, 4, 4)`` camera-to-world matrices of the views in cfd3d's convention
            (:mod:`cfd3d.scene.cameras`), for camera-conditioned priors (MVDream); ``None``
            for priors that ignore the camera.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    prompts: tuple[str, ...]
    perp_neg: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
    cameras: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.cond.shape[0]


class Prior(abc.ABC):
    """An eps-prediction text-to-image diffusion model.

    Subclasses implement :meth:`embed` and :meth:`eps`; classifier-free guidance, batching
    of the two branches and the prompt bookkeeping live here, once.

    Attributes:
        schedule: the model's discrete noise schedule.
        input_shape: ``(C, h, w)`` of the model input ``z``.
        image_size: ``(H, W)`` of the images :meth:`encode` expects.
    """

    schedule: NoiseSchedule
    input_shape: tuple[int, int, int]
    image_size: tuple[int, int]

    @abc.abstractmethod
    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, ...)`` embeddings of ``prompts``; ``""`` is the unconditional prompt.

        Raises:
            cfd3d.errors.UserError: for prompts the prior cannot take.
        """

    @abc.abstractmethod
    def eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        embedding: torch.Tensor,
        cameras: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw eps prediction.

        Args:
            x_t: ``(B, C, h, w)`` noisy input.
            t: ``(B,)`` integer timesteps.
            embedding: ``(B, ...)`` from :meth:`embed`.
            cameras: ``(B, 4, 4)`` camera-to-world matrices (cfd3d's convention) for
                camera-conditioned priors; other priors ignore them.

        Returns:
            ``(B, C, h, w)`` predicted noise (v-prediction models convert to eps).
        """

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``(B, 3, H, W)`` images in [0, 1] to the model input space (differentiable).

        Pixel priors use ``2 x - 1`` after an area resize (anti-aliased supersampling) to
        :attr:`image_size` when the render is larger; latent priors override this with their
        VAE encoder.
        """
        if tuple(images.shape[-2:]) != tuple(self.image_size):
            images = torch.nn.functional.interpolate(images, size=self.image_size, mode="area")
        return images * 2.0 - 1.0

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map model inputs back to ``(B, 3, H, W)`` images in [0, 1]."""
        return ((z + 1.0) * 0.5).clamp(0.0, 1.0)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def condition(
        self, prompts: str | Sequence[str], negative_prompt: str = "", batch_size: int = 1
    ) -> Condition:
        """Embed prompts for a batch.

        Args:
            prompts: one prompt (repeated ``batch_size`` times) or one per batch element.
            negative_prompt: replaces the unconditional branch of guidance when not empty.
            batch_size: batch size when ``prompts`` is a single string.
        """
        prompt_list = [prompts] * batch_size if isinstance(prompts, str) else list(prompts)
        unique = sorted(set(prompt_list) | {negative_prompt})
        table = dict(zip(unique, self.embed(unique), strict=True))
        cond = torch.stack([table[p] for p in prompt_list])
        uncond = table[negative_prompt].unsqueeze(0).expand_as(cond)
        return Condition(cond=cond, uncond=uncond, prompts=tuple(prompt_list))

    def predict_eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        condition: Condition,
        guidance_scale: float,
    ) -> torch.Tensor:
        """Guided eps prediction, all branches in one batch.

        :func:`classifier_free_guidance`, or :func:`perp_neg_guidance` when ``condition``
        carries Perp-Neg negatives.

        Args:
            x_t: ``(B, C, h, w)``; t: ``(B,)`` or scalar integer timesteps.
            condition: from :meth:`condition`, batch ``B``.
            guidance_scale: 1 gives the conditional prediction (without negatives).
        """
        t = t.expand(x_t.shape[0]) if t.ndim == 0 else t
        cameras = condition.cameras
        if guidance_scale == 1.0 and not condition.perp_neg:
            return self.eps(x_t, t, condition.cond, cameras)
        embeddings = [condition.cond, condition.uncond, *(e for e, _ in condition.perp_neg)]
        n = len(embeddings)
        eps = self.eps(
            torch.cat([x_t] * n),
            torch.cat([t] * n),
            torch.cat(embeddings),
            None if cameras is None else torch.cat([cameras] * n),
        )
        eps_cond, eps_uncond, *eps_negs = eps.chunk(n)
        if not eps_negs:
            return classifier_free_guidance(eps_cond, eps_uncond, guidance_scale)
        weights = [w for _, w in condition.perp_neg]
        return perp_neg_guidance(eps_cond, eps_uncond, eps_negs, weights, guidance_scale)
