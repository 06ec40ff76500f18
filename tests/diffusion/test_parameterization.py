import torch

from cfd3d.diffusion.guidance import classifier_free_guidance, perp_neg_guidance
from cfd3d.diffusion.parameterization import eps_to_v, eps_to_x0, v_to_eps, x0_to_eps


def _setup(non_vp: bool = False):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    alpha = torch.rand(5, 1, 1, 1, generator=g, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt() * (1.7 if non_vp else 1.0)
    return x0, eps, alpha, sigma, alpha * x0 + sigma * eps


def test_eps_x0_round_trip():
    x0, eps, alpha, sigma, x_t = _setup()
    assert torch.allclose(eps_to_x0(x_t, eps, alpha, sigma), x0)
    assert torch.allclose(x0_to_eps(x_t, x0, alpha, sigma), eps)


def test_v_prediction_conversions_vp_and_not_vp():
    for non_vp in (False, True):
        x0, eps, alpha, sigma, x_t = _setup(non_vp)
        v = alpha * eps - sigma * x0
        assert torch.allclose(v_to_eps(x_t, v, alpha, sigma), eps)
        assert torch.allclose(eps_to_v(x_t, eps, alpha, sigma), v)


def test_classifier_free_guidance_formula():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    # uncond + s (cond - uncond), not cond + s (cond - uncond)
    assert torch.equal(classifier_free_guidance(cond, uncond, 3.0), torch.tensor([4.0, -5.0]))


def test_perp_neg_removes_only_the_negative_part_orthogonal_to_the_prompt():
    uncond = torch.zeros(2, 2)
    pos = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    neg = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # parallel part (1, 0), orthogonal (0, 1)
    plain = classifier_free_guidance(pos, uncond, 2.0)
    assert torch.equal(perp_neg_guidance(pos, uncond, [], [], 2.0), plain)
    assert torch.allclose(
        perp_neg_guidance(pos, uncond, [neg], [0.5], 2.0), torch.tensor([[2.0, -1.0]] * 2)
    )
    # One weight per sample: the first untouched, the second pushed off the negative.
    per_sample = perp_neg_guidance(pos, uncond, [neg], [torch.tensor([0.0, 1.0])], 2.0)
    assert torch.allclose(per_sample, torch.tensor([[2.0, 0.0], [2.0, -2.0]]))
