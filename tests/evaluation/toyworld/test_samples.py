"""cfd3d.evaluation.toyworld.samples: judging the prior, loading it from a checkpoint."""

from dataclasses import asdict

import torch

from cfd3d.evaluation.toyworld.samples import prior_from_checkpoint
from cfd3d.priors.embedded.unet import TinyUNet, UNetConfig
from cfd3d.priors.embedded.world import WorldConfig, vocabulary
from cfd3d.scene.sampling import CameraSamplerConfig

OTHER_WORLD = WorldConfig(
    cameras=CameraSamplerConfig(
        elevation_deg=(-10.0, 90.0), distance=(1.4, 1.4), fovy_deg=(50.0, 50.0)
    ),
    face_rgb=(0.06, 0.06, 0.08),
)
"""A world like the draft v2 one: other cameras (up to overhead), a dark face."""
TINY = UNetConfig(channels=(16, 32), text_width=32, vocab_size=len(vocabulary()) + 1)


def test_a_checkpoint_says_which_world_it_learns(tmp_path):
    path = tmp_path / "checkpoint.pt"
    data = {"world": asdict(OTHER_WORLD), "n": 8, "seed": 0}
    state = {"ema": TinyUNet(TINY).state_dict(), "config": {"unet": asdict(TINY)}, "step": 3}
    torch.save({**state, "data": data}, path)
    prior, step = prior_from_checkpoint(path)
    assert prior.world == OTHER_WORLD and step == 3
