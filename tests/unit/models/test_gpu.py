"""The same networks on a GPU: selected by device, results match the CPU."""
import copy

import pytest
import torch

from models.config import DiscriminatorConfig, GeneratorConfig, LossConfig
from models.discriminators import ImageDiscriminator, TemporalDiscriminator
from models.generator import Generator, generate_clip
from models.objective import FlowInputs, generator_losses
from models.warp import warp

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_warp_integer_shift_on_gpu():
    image = torch.rand(2, 3, 9, 13, device="cuda")
    flow = torch.zeros(2, 2, 9, 13, device="cuda")
    flow[:, 0] = 2
    assert torch.allclose(warp(image, flow)[..., :-2], image[..., 2:], atol=1e-6)


@pytest.fixture
def no_tf32():
    # TF32 convolutions (cuDNN's default) round to 10-bit mantissas: compare in true fp32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_generator_discriminators_and_losses_match_cpu(no_tf32):
    torch.manual_seed(0)
    gen = Generator(GeneratorConfig(ngf=8, n_downsample=2, n_blocks=2, num_scales=2, n_blocks_local=1,
                                    spade_hidden=8), 4).eval()
    disc = ImageDiscriminator(DiscriminatorConfig(ndf=8), 4)
    temporal = TemporalDiscriminator(DiscriminatorConfig(ndf=8))
    labels = torch.nn.functional.one_hot(torch.randint(0, 4, (1, 3, 32, 64)), 4).permute(0, 1, 4, 2, 3).float()
    real = torch.rand(1, 3, 3, 32, 64) * 2 - 1
    flow_ref = torch.rand(1, 3, 2, 32, 64)

    def run(device):
        g, d, t = (copy.deepcopy(m).to(device) for m in (gen, disc, temporal))
        lab, rl, fl = labels.to(device), real.to(device), flow_ref.to(device)
        clip = generate_clip(g, lab)
        terms = generator_losses(LossConfig(), fake=clip.images[:, 1:], real=rl[:, 1:],
                                 d_fake=d(lab[:, 1:], clip.images[:, 1:]), d_real=d(lab[:, 1:], rl[:, 1:]),
                                 t_fake=t(clip.images, fl), t_real=t(rl, fl),
                                 flow=FlowInputs(clip.flow[:, 1:], real=rl[:, 1:], real_prev=rl[:, :-1],
                                                 target=fl[:, 1:], mask=clip.mask[:, 1:]))
        terms["total"].backward()
        return clip.images.detach().cpu(), {k: v.item() for k, v in terms.items()}

    cpu_images, cpu_terms = run("cpu")
    gpu_images, gpu_terms = run("cuda")
    assert torch.allclose(cpu_images, gpu_images, atol=2e-3)
    for key, value in cpu_terms.items():
        assert gpu_terms[key] == pytest.approx(value, rel=2e-3, abs=2e-3), key


def test_batch_norm_with_bf16_parameters_beside_fp32_statistics():
    """DeepSpeed's bf16 cast (parameters only) on the paper config's batch norms: CUDA's backward refuses
    it for nn.BatchNorm2d (the forward runs); models.norms.BatchNorm2d trains, matching fp32."""
    from torch import nn

    from models.norms import BatchNorm2d

    torch.manual_seed(0)
    reference = nn.BatchNorm2d(8).cuda()
    x = torch.randn(2, 8, 16, 16, device="cuda")
    expected = copy.deepcopy(reference)(x)
    plain, mixed = copy.deepcopy(reference), BatchNorm2d(8).cuda()
    mixed.load_state_dict(reference.state_dict())
    for module in (plain, mixed):
        for param in module.parameters():
            param.data = param.data.bfloat16()
    # As in training, where the error was seen (the paper config's first step on an H200), the input
    # needs a gradient too: CUDA's backward may take another path without one. Not yet run on a GPU.
    with pytest.raises(RuntimeError, match="running_mean"):
        plain(x.bfloat16().requires_grad_()).float().square().sum().backward()
    inputs = x.bfloat16().requires_grad_()
    out = mixed(inputs)
    out.float().square().sum().backward()
    assert out.dtype == torch.bfloat16 and mixed.running_mean.dtype == torch.float32
    assert mixed.weight.grad.dtype == torch.bfloat16 and mixed.weight.grad.abs().sum() > 0
    assert inputs.grad is not None and inputs.grad.abs().sum() > 0
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.02)
