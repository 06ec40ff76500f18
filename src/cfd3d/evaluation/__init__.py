"""Measuring what cfd3d costs and how well it does: memory, time, image and shape metrics,
and the toy-world evaluation that the benchmarks share (:mod:`cfd3d.evaluation.toyworld`)."""
