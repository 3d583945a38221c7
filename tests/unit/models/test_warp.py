"""Warping with flow in pixels: identity, integer shifts, gradients, flow composition."""
import pytest
import torch

from models.warp import compose_flows, warp


def _constant_flow(shape, dx, dy):
    flow = torch.zeros(*shape[:-3], 2, *shape[-2:])
    flow[..., 0, :, :] = dx
    flow[..., 1, :, :] = dy
    return flow


def test_zero_flow_is_identity():
    image = torch.rand(2, 3, 9, 13)
    assert torch.allclose(warp(image, torch.zeros(2, 2, 9, 13)), image, atol=1e-6)


@pytest.mark.parametrize("dx,dy", [(1, 0), (0, 2), (-2, 1), (3, -1), (5, -4)])
def test_integer_shift_matches_rolled_image_in_interior(dx, dy):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 9, 13)
    out = warp(image, _constant_flow(image.shape, dx, dy))
    # warp samples image at p + flow: out[y, x] = image[y + dy, x + dx].
    rolled = torch.roll(image, shifts=(-dy, -dx), dims=(-2, -1))
    ys = slice(max(0, -dy), 9 - max(0, dy))
    xs = slice(max(0, -dx), 13 - max(0, dx))
    # Exact up to float32 rounding of the [-1, 1] grid (measured max error ~4e-7).
    assert torch.allclose(out[..., ys, xs], rolled[..., ys, xs], atol=1e-6, rtol=0)
    # Outside the frame the border value is repeated, not zero.
    if dx > 0:
        assert torch.allclose(out[..., ys, -1], image[..., ys.start + dy:ys.stop + dy, -1], atol=1e-6)


def test_bfloat16_frames_are_warped_with_float32_coordinates():
    # bf16 cannot hold x = 257; a bf16 grid would move the right half of a wide frame by pixels.
    image = torch.arange(300, dtype=torch.float32).repeat(2, 1).view(1, 1, 2, 300) / 300
    flow = _constant_flow(image.shape, 3, 0).to(torch.bfloat16)
    out = warp(image.to(torch.bfloat16), flow)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float()[..., :-3], image.to(torch.bfloat16).float()[..., 3:], atol=0)


def test_half_pixel_shift_averages_neighbours():
    image = torch.tensor([[[[0.0, 2.0, 4.0, 6.0]] * 2]])  # [1, 1, 2, 4]
    out = warp(image, _constant_flow(image.shape, 0.5, 0.0))
    assert torch.allclose(out[0, 0, 0, :3], torch.tensor([1.0, 3.0, 5.0]), atol=1e-6)


def test_leading_time_axis_is_supported():
    image = torch.rand(2, 4, 3, 8, 8)
    out = warp(image, _constant_flow(image.shape, 1, 0))
    assert out.shape == image.shape
    assert torch.allclose(out[:, :, :, :, :-1], image[:, :, :, :, 1:], atol=1e-6)


def test_gradients_reach_the_flow():
    torch.manual_seed(0)
    image = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    flow = (torch.rand(1, 2, 5, 6, dtype=torch.float64) - 0.5) * 1.6 + 0.05  # no integer kinks
    flow.requires_grad_(True)
    warp(image, flow).pow(2).sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda f: warp(image, f), (flow.detach().requires_grad_(True),))


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 8, 8\)"):
        warp(torch.rand(1, 3, 8, 8), torch.zeros(1, 2, 8, 7))


def test_compose_two_integer_shifts_adds_them():
    flows = torch.stack([_constant_flow((1, 2, 6, 7), 2, 0), _constant_flow((1, 2, 6, 7), 1, -1)], dim=1)
    composed = compose_flows(flows)
    assert torch.allclose(composed, _constant_flow((1, 2, 6, 7), 3, -1), atol=1e-5)


def test_compose_follows_the_later_flow_first():
    # f_t shifts by +1 in x; f_{t-1} varies with x. Then f(p) = (1, 0) + f_{t-1}(p + (1, 0)).
    width = 6
    later = _constant_flow((1, 2, 4, width), 1, 0)
    earlier = torch.zeros(1, 2, 4, width)
    earlier[:, 1] = torch.arange(width, dtype=torch.float32)  # dy = x
    composed = compose_flows(torch.stack([earlier, later], dim=1))
    xs = torch.arange(width - 1, dtype=torch.float32)
    assert torch.allclose(composed[0, 0, :, :-1], torch.ones(4, width - 1), atol=1e-5)
    assert torch.allclose(composed[0, 1, :, :-1], (xs + 1).expand(4, -1), atol=1e-5)
