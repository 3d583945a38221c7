"""Running feature statistics, the Frechet distance, and loading local TorchScript feature nets."""
import numpy as np
import pytest
import scipy.linalg
import torch
from torch import Tensor, nn

from models.frechet import FeatureStats, frechet_distance, load_feature_net


def _stats(data: np.ndarray, pieces: int = 1) -> FeatureStats:
    stats = FeatureStats()
    for part in np.array_split(data, pieces):
        stats.update(torch.from_numpy(part))
    return stats


def _data_with(mean: np.ndarray, variances: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is ``mean`` and sample covariance exactly diag(variances)."""
    centred = np.random.default_rng(seed).normal(size=(n, len(mean)))
    centred -= centred.mean(axis=0)
    q, _ = np.linalg.qr(centred)  # orthonormal columns, still orthogonal to the ones vector
    return mean + q * np.sqrt((n - 1) * variances)


# ----------------------------------------------------------------------------- FeatureStats

def test_feature_stats_in_chunks_match_numpy():
    # A large offset: raw sums of x x^T would lose the covariance to cancellation here.
    data = 1000 + np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7)
    stats = FeatureStats()
    for start, stop in [(0, 7), (7, 8), (8, 30), (30, 30), (30, 50)]:  # one row, and an empty chunk
        stats.update(torch.from_numpy(data[start:stop]))
    assert stats.count == 50
    assert np.allclose(stats.mean(), data.mean(axis=0), rtol=1e-12)
    assert np.allclose(stats.covariance(), np.cov(data, rowvar=False), rtol=1e-9)
    assert stats.covariance().dtype == np.float64


def test_feature_stats_refuse_a_wrong_dim_and_too_few_samples():
    stats = FeatureStats()
    stats.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="D=5.*D=4"):
        stats.update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least 2"):
        stats.covariance()
    with pytest.raises(ValueError, match="D=3.*D=8"):
        FeatureStats(dim=8).update(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- Frechet distance

@pytest.mark.parametrize("n,d", [(40, 6), (8, 20)])  # full rank, and rank-deficient (N < D)
def test_identical_statistics_are_at_distance_zero(n, d):
    data = np.random.default_rng(1).normal(size=(n, d))
    assert frechet_distance(_stats(data), _stats(data, pieces=3)) == pytest.approx(0, abs=1e-6)


def test_diagonal_covariances_give_the_hand_formula():
    mu1, s1 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 4.0, 0.25, 2.0])
    mu2, s2 = np.array([1.0, 1.0, 0.0, 0.0]), np.array([9.0, 1.0, 0.25, 0.5])
    a, b = _stats(_data_with(mu1, s1, 30, 2)), _stats(_data_with(mu2, s2, 25, 3))
    assert np.allclose(a.covariance(), np.diag(s1)) and np.allclose(b.mean(), mu2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)  # 5 + 4 + 1 + 0 + 0.5


def test_full_covariances_match_scipy_sqrtm_and_are_symmetric():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5))
    y = 0.5 + rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5))
    a, b = _stats(x, pieces=4), _stats(y)
    sa, sb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb)
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(sa + sb - 2 * np.real(root))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-10)
    with pytest.raises(ValueError, match="5 vs 3"):
        frechet_distance(a, _stats(rng.normal(size=(4, 3))))


# ----------------------------------------------------------------------------- feature nets

class _PlainImageNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(x))  # [N, 8, 1, 1]: the loader flattens it


class _PlainVideoNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(3, 4)).flatten(1) * torch.arange(1, x.shape[1] * 3 + 1)  # order-sensitive


class _StyleGANImageNet(nn.Module):
    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        assert x.dtype == torch.uint8, "the Inception net takes uint8"
        features = x.flatten(1).float()  # echo what it received
        return features if return_features else features[:, :1]


class _StyleGANVideoNet(nn.Module):
    def forward(self, x: Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3, "I3D takes uint8 [N, 3, T, H, W]"
        flags = torch.tensor([[float(rescale), float(resize), float(return_features)]])
        return torch.cat([flags.expand(x.shape[0], 3), x.flatten(1).float()], dim=1)


def _save(module: nn.Module, path) -> str:
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


def test_plain_image_net_gets_frames_as_given(tmp_path):
    module = _PlainImageNet().eval()
    net = load_feature_net(_save(module, tmp_path / "img.pt"), kind="image")
    frames = torch.rand(2, 3, 9, 9) * 2 - 1
    out = net(frames)
    assert out.shape == (2, 8) and out.dtype == torch.float32
    assert torch.allclose(out, module(frames).flatten(1), atol=1e-6)


def test_plain_video_net_gets_clips_as_given(tmp_path):
    net = load_feature_net(_save(_PlainVideoNet(), tmp_path / "vid.pt"), kind="video")
    clips = torch.rand(2, 4, 3, 5, 6) * 2 - 1
    assert torch.allclose(net(clips), _PlainVideoNet()(clips), atol=1e-6)


def test_stylegan_image_net_receives_uint8_nchw(tmp_path):
    net = load_feature_net(_save(_StyleGANImageNet(), tmp_path / "inception.pt"), kind="image")
    frames = torch.tensor([-1.0, 0.0, 1.0, 0.5, -0.5, 0.999]).view(1, 1, 2, 3).expand(2, 3, 2, 3)
    # StyleGAN2-ADA quantisation: floor(127.5 x + 128) clamped to 0..255.
    expected = torch.tensor([0.0, 128, 255, 191, 64, 255]).repeat(2, 3)
    assert torch.equal(net(frames), expected)


def test_stylegan_video_net_receives_uint8_n3thw_with_its_flags(tmp_path):
    net = load_feature_net(_save(_StyleGANVideoNet(), tmp_path / "i3d.pt"), kind="video")
    clips = torch.rand(2, 4, 3, 5, 6) * 2 - 1
    out = net(clips)
    assert torch.equal(out[:, :3], torch.ones(2, 3))  # rescale, resize, return_features all True
    received = (clips * 127.5 + 128).clamp(0, 255).floor().permute(0, 2, 1, 3, 4)
    assert torch.equal(out[:, 3:], received.flatten(1))


def test_missing_and_non_torchscript_files_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "i3d_torchscript.pt"
    with pytest.raises(FileNotFoundError, match=r"i3d_torchscript\.pt.*FVD I3D network"):
        load_feature_net(missing, kind="video")
    state_dict = tmp_path / "state.pt"
    torch.save(_PlainImageNet().state_dict(), state_dict)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a network" * 10)
    for path in (state_dict, garbage):
        with pytest.raises(ValueError, match=rf"{path.name}.*TorchScript file"):
            load_feature_net(path, kind="image")


def test_outputs_that_are_not_per_sample_vectors_are_refused(tmp_path):
    class Scalar(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.mean()

    net = load_feature_net(_save(Scalar(), tmp_path / "scalar.pt"), kind="image")
    with pytest.raises(ValueError, match=r"scalar\.pt.*\[N, D\]"):
        net(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        net(torch.zeros(2, 4, 3, 4, 4))
