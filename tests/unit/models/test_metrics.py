"""PSNR, SSIM and warping error against hand computations and an independent scipy SSIM."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.metrics import PSNR_CAP_DB, psnr, ssim, warping_error
from models.warp import warp

C1, C2 = 0.01 ** 2, 0.03 ** 2


def _to_signed(unit):
    """[0, 1] -> [-1, 1], the range frames arrive in."""
    return unit * 2 - 1


# ----------------------------------------------------------------------------- PSNR

def test_psnr_of_a_constant_offset_is_the_hand_value():
    real = torch.rand(3, 8, 8) - 0.5
    d = 0.1  # on the [0, 1] scale, i.e. 0.2 on [-1, 1]
    assert psnr(real + 2 * d, real).item() == pytest.approx(10 * math.log10(1 / d ** 2), abs=1e-4)


def test_psnr_broadcasts_over_leading_dims():
    real = torch.rand(2, 4, 3, 6, 5) - 0.5
    offsets = torch.tensor([[0.01, 0.02, 0.05, 0.1], [0.2, 0.3, 0.05, 0.01]])
    out = psnr(real + 2 * offsets[..., None, None, None], real)
    assert out.shape == (2, 4)
    assert torch.allclose(out, -20 * torch.log10(offsets), atol=1e-3)


def test_psnr_of_identical_or_near_identical_frames_is_the_cap():
    frames = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert psnr(frames, frames).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]
    # 120 dB would exceed the cap: it is clipped, not only the exact zero.
    assert psnr(frames + 2e-6, frames).tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]


def test_psnr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))


# ----------------------------------------------------------------------------- SSIM

def _reference_ssim(fake_unit: np.ndarray, real_unit: np.ndarray) -> float:
    """skimage's algorithm written out with scipy: Gaussian filter (sigma 1.5, truncate 3.5 = an
    11-tap window), reflect padding, then the 5-px border cropped away; population moments."""
    def blur(image):
        return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")

    maps = []
    for x, y in zip(fake_unit, real_unit):  # channel by channel
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
        s = ((2 * mx * my + C1) * (2 * cxy + C2)) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))
        maps.append(s[5:-5, 5:-5])
    return float(np.mean(maps))


def test_ssim_matches_an_independent_scipy_reference():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(2, 3, 16, 21, generator=gen, dtype=torch.float64)
    fake = (real + 0.3 * torch.rand(2, 3, 16, 21, generator=gen, dtype=torch.float64)).clamp(0, 1)
    fake[1] = torch.rand(3, 16, 21, generator=gen, dtype=torch.float64)  # an unrelated image too
    out = ssim(_to_signed(fake).float(), _to_signed(real).float())
    for i in range(2):
        expected = _reference_ssim(fake[i].numpy(), real[i].numpy())
        assert out[i].item() == pytest.approx(expected, abs=1e-5)
    assert out[0] > 0.3 > out[1]  # the reference itself tells correlated from unrelated


def test_ssim_of_identical_frames_is_one():
    frames = torch.rand(4, 3, 12, 12) * 2 - 1
    assert torch.allclose(ssim(frames, frames), torch.ones(4), atol=1e-6)


def test_ssim_of_two_constant_images_is_the_luminance_term():
    a, b = 0.3, 0.7
    fake = torch.full((3, 11, 13), _to_signed(a))
    real = torch.full((3, 11, 13), _to_signed(b))
    # Zero variance on both sides: the contrast-structure term is C2 / C2 = 1.
    expected = (2 * a * b + C1) / (a ** 2 + b ** 2 + C1)
    assert ssim(fake, real).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_is_symmetric_broadcasts_and_drops_with_noise():
    gen = torch.Generator().manual_seed(1)
    real = torch.rand(2, 2, 3, 16, 16, generator=gen) * 2 - 1
    fake = real + 0.1 * torch.randn(real.shape, generator=gen)
    noisier = real + 0.4 * torch.randn(real.shape, generator=gen)
    assert ssim(fake, real).shape == (2, 2)
    assert torch.allclose(ssim(fake, real), ssim(real, fake), atol=1e-6)
    assert (ssim(noisier, real) < ssim(fake, real)).all()


def test_ssim_rejects_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="10x16"):
        ssim(torch.zeros(3, 10, 16), torch.zeros(3, 10, 16))


# ----------------------------------------------------------------------------- warping error

def _shifted_clip(steps, height, width, shifts, low=0.2, high=0.6):
    """Clips whose content moves by (sx, sy) whole pixels per frame, with the exact backward flow.

    frame_t(p) = big(p + offset - t s), so frame_{t-1}(p - s) = frame_t(p): the flow is -s.
    Values stay in [low, high] on the [0, 1] scale so a brightness flicker never clips.
    """
    frames, flows = [], []
    for sx, sy in shifts:
        span = steps - 1
        big = low + (high - low) * torch.rand(3, height + abs(sy) * span, width + abs(sx) * span)
        ox, oy = max(sx, 0) * span, max(sy, 0) * span
        crops = [big[:, oy - t * sy:oy - t * sy + height, ox - t * sx:ox - t * sx + width]
                 for t in range(steps)]
        frames.append(torch.stack(crops))
        flow = torch.zeros(steps, 2, height, width)
        flow[:, 0], flow[:, 1] = -sx, -sy
        flow[0] = 50 * torch.randn(2, height, width)  # flow[:, 0] is unused: garbage must not matter
        flows.append(flow)
    return torch.stack(frames), torch.stack(flows)


def test_exact_flow_gives_zero_error_over_the_in_frame_pixels():
    torch.manual_seed(0)
    steps, height, width = 4, 8, 12
    unit, flow = _shifted_clip(steps, height, width, [(2, 0), (0, -1)])
    result = warping_error(_to_signed(unit), flow)
    assert result.error.max().item() < 1e-10
    # In frame: x - 2 >= 0 for clip 0 (10 of 12 columns), y + 1 <= 7 for clip 1 (7 of 8 rows).
    expected = [(steps - 1) * height * (width - 2), (steps - 1) * (height - 1) * width]
    assert result.weight.tolist() == expected
    # The excluded strip holds border-clamped copies that do not match: the mask is what removes them.
    strip = (warp(unit[0, :-1], flow[0, 1:]) - unit[0, 1:])[..., :2]
    assert strip.abs().max() > 0.05


def test_flicker_on_odd_frames_gives_its_square():
    torch.manual_seed(1)
    unit, flow = _shifted_clip(5, 8, 12, [(1, 1), (-2, 0)])
    d = 0.1
    unit[:, 1::2] += d
    result = warping_error(_to_signed(unit), flow)
    assert torch.allclose(result.error, torch.full((2,), d ** 2, dtype=torch.float64), atol=1e-6)


def test_confidence_weights_the_frames_as_by_hand():
    torch.manual_seed(2)
    unit, flow = _shifted_clip(3, 8, 12, [(1, 0)])
    d = 0.1
    unit[:, 2] += d  # pair (0, 1) is consistent, pair (1, 2) has error d^2
    confidence = torch.zeros(1, 3, 1, 8, 12)
    confidence[:, 1], confidence[:, 2] = 0.25, 1.0
    result = warping_error(_to_signed(unit), flow, confidence)
    assert result.error.item() == pytest.approx(1.0 * d ** 2 / (0.25 + 1.0), abs=1e-7)
    assert result.weight.item() == pytest.approx((0.25 + 1.0) * 8 * 11)


def test_zero_confidence_gives_nan_error_and_zero_weight():
    unit, flow = _shifted_clip(3, 8, 12, [(1, 0), (0, 1)])
    result = warping_error(_to_signed(unit), flow, torch.zeros(2, 3, 1, 8, 12))
    assert torch.isnan(result.error).all() and result.weight.tolist() == [0.0, 0.0]


def test_bfloat16_frames_are_cast_up():
    torch.manual_seed(3)
    unit, flow = _shifted_clip(3, 8, 12, [(1, 0)])
    unit = torch.round(unit * 64) / 64  # multiples of 1/64 and the flicker are exact in bf16
    unit[:, 1] += 0.125
    result = warping_error(_to_signed(unit).bfloat16(), flow.bfloat16())
    assert result.error.item() == pytest.approx(0.125 ** 2, abs=1e-7)


def test_single_frame_clips_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="T=1"):
        warping_error(torch.zeros(1, 1, 3, 8, 8), torch.zeros(1, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="flow"):
        warping_error(torch.zeros(1, 2, 3, 8, 8), torch.zeros(1, 2, 2, 8, 9))


def test_flow_diagnostics_by_hand():
    """One clip of 2 frames, 1x4 pixels: frame 1 has the mask high on its one new pixel, h exact there,
    the warped previous output off by 0.5 (on [0, 1]) on one pixel, and a flow 1 px off on one pixel."""
    from models.metrics import FlowDiagnostics, flow_diagnostics

    real = torch.zeros(1, 2, 3, 1, 4)
    images = real.clone()
    hallucinated = real.clone()
    hallucinated[:, 1, :, :, :2] = 1.0  # [-1, 1] scale: 0.5 off on the [0, 1] scale, 2 pixels
    warped = real.clone()
    warped[:, 1, :, :, 3] = -1.0  # 0.5 off, 1 pixel
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.9, 0.1, 0.1, 0.3]).view(1, 2, 1, 1, 4)
    flow = torch.zeros(1, 2, 2, 1, 4)
    flow[:, 1, 0, :, 1] = 1.0
    new = torch.tensor([[False] * 4, [True, False, False, False]]).view(1, 2, 1, 4)
    d = flow_diagnostics(images, hallucinated, warped, mask, flow, real, torch.zeros_like(flow), new)
    means = d.means()
    assert means["mask_disoccluded"] == pytest.approx(0.9)
    assert means["mask_visible"] == pytest.approx((0.1 + 0.1 + 0.3) / 3)
    assert means["mask_ratio"] == pytest.approx(0.9 / (0.5 / 3))
    assert means["disoccluded_share"] == pytest.approx(0.25)
    assert means["l1_hallucinated"] == pytest.approx(2 * 0.5 / 4)
    assert means["l1_hallucinated_disoccluded"] == pytest.approx(0.5)
    assert means["l1_warped"] == pytest.approx(0.5 / 4)
    assert means["l1_output"] == 0.0
    assert means["flow_epe_visible"] == pytest.approx(1 / 3)
    assert means["zero_flow_epe_visible"] == 0.0  # the true flow is 0 here
    assert means["psnr_by_frame"] == [PSNR_CAP_DB, PSNR_CAP_DB]
    # Sums pool over clips: two copies give the same means.
    assert (d + d).means() == means and (FlowDiagnostics() + d).means() == means
