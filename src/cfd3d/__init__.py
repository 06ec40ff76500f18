"""cfd3d: text-to-3D generation by Consistent Flow Distillation (CFD)."""

__version__ = "0.1.0"
