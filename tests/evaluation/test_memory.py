"""The saved-tensors meter on computations whose saved tensors are known."""

import torch

from cfd3d.evaluation.memory import SavedTensorsMeter


def test_meter_counts_each_saved_storage_once():
    x = torch.randn(1000, requires_grad=True)  # a leaf: 4000 bytes
    with SavedTensorsMeter() as meter:
        y = x.exp()  # saves its result y: 4000 bytes
        z = y.sin()  # saves its input y again: same storage, not counted twice
        w = y[:500].cos()  # saves a view of y: same storage
        v = (x * 2.0).sum()  # x * 2 saves nothing (the scalar is not a tensor input)
    assert meter.n_saved == 3
    assert meter.nbytes == 4000
    assert y.requires_grad and z.requires_grad and w.requires_grad and v.requires_grad


def test_meter_counts_inputs_and_outputs_of_different_storages():
    x = torch.randn(100, 3, requires_grad=True)
    weight = torch.randn(3, 8, dtype=torch.float64)
    with SavedTensorsMeter() as meter:
        # The gradient in x.double() needs the weight (3 * 8 * 8 = 192 bytes), not the
        # other way round (the weight needs no gradient, so x.double() is not saved).
        h = x.double() @ weight
        torch.sigmoid(h)  # saves its output: 100 * 8 * 8 = 6400 bytes
    assert meter.n_saved == 2
    assert meter.nbytes == 192 + 6400


def test_meter_excludes_parameters_and_ignores_work_outside_the_block():
    linear = torch.nn.Linear(4, 16)
    points = torch.randn(50, 4)
    linear(points).relu()  # before the block: not counted
    with SavedTensorsMeter(exclude=linear.parameters()) as meter:
        linear(points).relu()  # addmm saves the input (800 B) and the weight (excluded);
        # relu saves its output (50 * 16 * 4 = 3200 B)
    assert meter.nbytes == 800 + 3200
    with torch.no_grad(), SavedTensorsMeter() as meter:
        linear(points).relu()
    assert meter.nbytes == 0 and meter.n_saved == 0
