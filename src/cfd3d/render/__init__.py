"""Turning fields into images: the volume renderer, shading and backgrounds."""
