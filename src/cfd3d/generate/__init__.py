"""Text-to-3D: the run configuration and presets, the optimisation loop, its outputs and
the ``cfd3d generate`` command."""

from cfd3d.generate.config import PRESETS, GenerateConfig, load_config, preset_config
from cfd3d.generate.run import Run, StepResult

__all__ = ["PRESETS", "GenerateConfig", "Run", "StepResult", "load_config", "preset_config"]
