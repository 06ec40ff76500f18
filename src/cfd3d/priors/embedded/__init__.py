"""The embedded prior: a small text-to-image diffusion model trained by cfd3d on a
procedural toy world and shipped inside the package (the default, offline, CPU prior)."""
