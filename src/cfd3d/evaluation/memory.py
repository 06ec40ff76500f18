"""How many bytes a computation keeps alive for its backward pass.

Autograd saves tensors during the forward pass (inputs of products, outputs of
exponentials, gather indices, ...) and frees them only after backward. Their total is
what a differentiable renderer pays per ray sample, the figure that decides how large an
image fits in memory. :class:`SavedTensorsMeter` counts it with
``torch.autograd.graph.saved_tensors_hooks``: every tensor saved inside its ``with``
block is recorded by the storage it lives in, and each storage is counted once however
many views of it are saved. Storages of excluded tensors (the parameters, which exist
with or without a graph) are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return str(tensor.device), tensor.untyped_storage().data_ptr()


class SavedTensorsMeter:
    """Bytes of the distinct storages saved for backward inside a ``with`` block.

    Example::

        with SavedTensorsMeter(exclude=field.parameters()) as meter:
            out = renderer(field, cameras, 32, 32, shading="diffuse")
        meter.nbytes / n_samples  # bytes kept per sample

    The meter keeps a reference to every storage it counts until the block ends, so a
    storage freed inside the block cannot reappear at the same address and be mistaken
    for a counted one; graphs that outlive the block (the usual case: backward comes
    later) hold them anyway. Tensors that autograd keeps without saving them (a custom
    function's ``ctx`` attributes) are invisible to the hooks and not counted.

    Args:
        exclude: tensors whose storages are not counted (e.g. ``module.parameters()``).

    Attributes:
        nbytes: total bytes of the distinct saved storages (final once the block ends).
        n_saved: number of tensors saved (views and repeats included).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(t) for t in exclude}
        self._storages: dict[tuple[str, int], torch.UntypedStorage] = {}
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None
        self.nbytes = 0
        self.n_saved = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.n_saved += 1
        key = _storage_key(tensor)
        if key not in self._excluded and key not in self._storages:
            storage = tensor.untyped_storage()
            self._storages[key] = storage
            self.nbytes += storage.nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> SavedTensorsMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc_info)
        self._hooks = None
        self._storages.clear()
