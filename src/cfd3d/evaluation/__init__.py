"""Measuring what cfd3d costs and how well it does: memory, time, image and shape metrics."""
