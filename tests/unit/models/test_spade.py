"""models/spade.py: gamma and beta made by one convolution give the paper's formula, values and gradients."""
import copy

import pytest
import torch
import torch.nn.functional as F

from models.layers import conv_factory
from models.spade import SPADE


def _paper(spade: SPADE, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``norm(x) * (1 + gamma(h)) + beta(h)``, h the shared embedding of the resized labels: each
    convolution called on its own, as written in the paper."""
    labels = F.interpolate(labels, size=x.shape[-2:], mode="nearest")
    hidden = spade.shared(labels)
    return spade.norm(x) * (1 + spade.gamma(hidden)) + spade.beta(hidden)


@pytest.mark.parametrize("spectral", [False, True])
def test_one_convolution_for_gamma_and_beta_is_the_paper_formula(spectral):
    torch.manual_seed(0)
    spade = SPADE(6, 4, 5, conv=conv_factory(spectral))
    reference = copy.deepcopy(spade)
    if spectral:  # no power iteration: each weight read gives the same normalized weight
        spade.eval(), reference.eval()
    x = torch.randn(2, 6, 8, 12, requires_grad=True)
    labels = torch.rand(2, 4, 4, 6)
    out, expected = spade(x, labels), _paper(reference, x, labels)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), [x, *spade.parameters()])
    expected_grads = torch.autograd.grad((expected * weights).sum(), [x, *reference.parameters()])
    assert len(grads) == len(expected_grads) > 4
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)
