"""models/norms.py: batch norm with bf16 parameters beside fp32 statistics (how DeepSpeed casts a module
for bf16); instance norm as a group norm of one channel per group."""
import copy

import pytest
import torch
from torch import nn

from models.norms import BatchNorm2d, InstanceNorm2d


def _pair(momentum):
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4, momentum=momentum)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    mixed = BatchNorm2d(4, momentum=momentum)
    mixed.load_state_dict(reference.state_dict())
    for param in mixed.parameters():  # DeepSpeed's bf16 cast: parameters only, buffers stay fp32
        param.data = param.data.bfloat16()
    return reference, mixed


@pytest.mark.parametrize("momentum", [0.1, None])
def test_bf16_parameters_beside_fp32_statistics(momentum):
    reference, mixed = _pair(momentum)
    x = torch.randn(3, 4, 5, 6) * 2 + 1
    for _ in range(2):  # training: batch statistics, running averages updated in fp32
        expected, out = reference(x), mixed(x.bfloat16())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)
    assert mixed.running_mean.dtype == torch.float32 and int(mixed.num_batches_tracked) == 2
    torch.testing.assert_close(mixed.running_mean, reference.running_mean, atol=0.01, rtol=0.01)
    torch.testing.assert_close(mixed.running_var, reference.running_var, atol=0.05, rtol=0.02)
    out.float().square().sum().backward()  # the gradient reaches the bf16 parameters through the cast
    assert mixed.weight.grad.dtype == torch.bfloat16 and mixed.weight.grad.abs().sum() > 0
    reference.eval(), mixed.eval()  # inference: the running averages
    torch.testing.assert_close(mixed(x.bfloat16()).float(), reference(x), atol=0.05, rtol=0.02)


def test_one_dtype_is_nn_batch_norm():
    reference, _ = _pair(0.1)
    same = BatchNorm2d(4)
    same.load_state_dict(reference.state_dict())
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(same(x), copy.deepcopy(reference)(x))


@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_is_nn_instance_norm(affine):
    torch.manual_seed(0)
    reference = nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
            reference.bias.uniform_(-0.5, 0.5)
    ours = InstanceNorm2d(6, affine=affine)
    ours.load_state_dict(reference.state_dict())  # the same parameters, the same state dict
    x = (torch.randn(3, 6, 7, 9) * 3 + 2).requires_grad_()
    expected, out = reference(x), ours(x)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(expected)  # a loss that weighs every output differently
    grads = torch.autograd.grad((expected * weights).sum(), [x, *reference.parameters()])
    ours_grads = torch.autograd.grad((out * weights).sum(), [x, *ours.parameters()])
    for g, o in zip(grads, ours_grads, strict=True):
        torch.testing.assert_close(o, g, atol=1e-4, rtol=1e-4)
