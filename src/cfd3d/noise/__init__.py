"""Noise for distillation: multi-view consistent (integral) noise, its ablations, and the
clean-flow SDE refresh."""
