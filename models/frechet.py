"""Frechet distances between feature distributions: FID per frame, FVD per clip.

The feature networks are injected as local TorchScript files, the form in which the networks
behind published numbers exist for PyTorch; nothing is downloaded. Calling conventions, read from
the code that publishes them:

- FID, StyleGAN2-ADA ``inception-2015-12-05.pt`` (metrics/frechet_inception_distance.py,
  metrics/metric_utils.py): ``detector(images, return_features=True)`` on uint8 [N, 3, H, W] in
  0..255 (generated images are quantised with ``(x * 127.5 + 128).clamp(0, 255).to(uint8)``; the
  net resizes to 299 itself) -> [N, 2048].
- FVD, StyleGAN-V ``i3d_torchscript.pt`` (src/metrics/frechet_video_distance.py,
  src/metrics/metric_utils.py): ``detector(videos, rescale=True, resize=True,
  return_features=True)`` on uint8 [N, 3, T, H, W] in 0..255 (clips permuted from [N, T, C, H, W],
  quantised as above; ``rescale`` maps 0..255 to the [-1, 1] of the TF-Hub I3D and ``resize``
  brings frames to 224) -> [N, 400], the logits before the softmax. (Ports that pass
  ``rescale=False`` feed float [-1, 1] already at 224, e.g. universome/fvd-comparison; we follow
  StyleGAN-V itself, whose numbers are the ones papers compare to.)

The Frechet distance itself avoids ``scipy.linalg.sqrtm`` of the non-symmetric S_a S_b, which
goes complex and loses digits on rank-deficient covariances (few clips, 400-2048 dims).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

FeatureNet = Callable[[Tensor], Tensor]
"""image nets: frames [N, 3, H, W] in [-1, 1] -> [N, D]; video nets: clips [N, T, 3, H, W] in
[-1, 1] -> [N, D]."""

_PURPOSE = {"image": "FID Inception network", "video": "FVD I3D network"}


class FeatureStats:
    """Running mean/covariance of feature vectors, float64, memory O(D^2) regardless of N.

    Batches are merged with Chan et al.'s pairwise update of (count, mean, scatter) rather than raw
    sums of x x^T: features with a large mean relative to their spread would otherwise lose the
    covariance to cancellation in E[x x^T] - mu mu^T.
    """

    def __init__(self, dim: int | None = None) -> None:
        self._dim = dim
        self._count = 0
        self._mean: np.ndarray | None = None
        self._scatter: np.ndarray | None = None  # sum of (x - mean)(x - mean)^T

    def update(self, features: Tensor) -> None:
        """Add a batch [N, D]; the first call fixes D unless it was given."""
        if features.dim() != 2:
            raise ValueError(f"FeatureStats.update: expected [N, D], got {tuple(features.shape)}")
        dim = features.shape[1]
        if self._dim is None:
            self._dim = dim
        elif dim != self._dim:
            raise ValueError(f"FeatureStats.update: features have D={dim}, "
                             f"these stats hold D={self._dim}")
        n_b = features.shape[0]
        if n_b == 0:
            return
        x = features.detach().to("cpu", torch.float64).numpy()
        mean_b = x.mean(axis=0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self._mean is None or self._scatter is None:
            self._count, self._mean, self._scatter = n_b, mean_b, scatter_b
            return
        n_a, total = self._count, self._count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / total)
        self._scatter = self._scatter + scatter_b + np.outer(delta, delta) * (n_a * n_b / total)
        self._count = total

    @property
    def count(self) -> int:
        return self._count

    @property
    def dim(self) -> int | None:
        return self._dim

    def mean(self) -> np.ndarray:
        """[D] mean of all features seen."""
        if self._mean is None:
            raise ValueError("FeatureStats.mean: no features were added")
        return self._mean.copy()

    def covariance(self) -> np.ndarray:
        """[D, D] unbiased (N - 1) covariance, like ``np.cov``."""
        if self._scatter is None or self._count < 2:
            raise ValueError(f"FeatureStats.covariance: needs at least 2 samples, got {self._count}")
        return self._scatter / (self._count - 1)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues (rounding) -> 0."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), clipped at >= 0.

    S_a S_b is similar to A^(1/2) S_b A^(1/2) (A^(1/2) the PSD root of S_a), which is symmetric
    PSD: its eigenvalues are real and >= 0, and the trace of the root is the sum of their roots.
    """
    if a.dim != b.dim:
        raise ValueError(f"frechet_distance: feature dims differ ({a.dim} vs {b.dim})")
    mu_a, mu_b = a.mean(), b.mean()
    cov_a, cov_b = a.covariance(), b.covariance()
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0, None)).sum()
    distance = np.square(mu_a - mu_b).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


def _to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] -> 0..255 exactly as StyleGAN2-ADA / StyleGAN-V quantise generated images."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


class _ScriptedFeatureNet:
    """A loaded TorchScript net plus the calling convention it was published with."""

    def __init__(self, module: torch.jit.ScriptModule, kind: str, path: Path,
                 device: torch.device) -> None:
        self.module, self.kind, self.path, self.device = module, kind, path, device
        names = {arg.name for arg in module.forward.schema.arguments}
        self.convention = "stylegan" if "return_features" in names else "plain"
        if self.convention == "stylegan" and kind == "video" and not {"rescale", "resize"} <= names:
            # A video net with return_features but not StyleGAN-V's flags: we cannot know what
            # range or size it expects, and guessing would give plausible but wrong FVDs.
            raise ValueError(f"{path}: forward has 'return_features' but not 'rescale'/'resize'; "
                             f"expected StyleGAN-V's I3D signature or a plain forward(clips)")

    def __call__(self, x: Tensor) -> Tensor:
        rank = 4 if self.kind == "image" else 5
        if x.dim() != rank or x.shape[-3] != 3:
            layout = "[N, 3, H, W]" if self.kind == "image" else "[N, T, 3, H, W]"
            raise ValueError(f"{self.path}: {self.kind} net takes {layout}, got {tuple(x.shape)}")
        x = x.to(self.device)
        with torch.no_grad():
            if self.convention == "plain":
                out = self.module(x)
            elif self.kind == "image":
                out = self.module(_to_uint8(x), return_features=True)
            else:
                clips = _to_uint8(x.permute(0, 2, 1, 3, 4).contiguous())  # [N, 3, T, H, W]
                out = self.module(clips, rescale=True, resize=True, return_features=True)
        if not isinstance(out, Tensor) or out.dim() < 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{self.path}: feature net returned {shape} for {x.shape[0]} inputs, "
                             f"expected [N, D] (or [N, D, 1, ...])")
        return out.reshape(out.shape[0], -1).float()


def load_feature_net(path: str | Path, kind: Literal["image", "video"],
                     device: str | torch.device = "cpu") -> FeatureNet:
    """Load a local TorchScript file (torch.jit.load, map_location=device) and wrap it with the
    calling convention it was published with.

    A forward with a ``return_features`` argument is taken for the StyleGAN2-ADA Inception (image)
    or the StyleGAN-V I3D (video) and fed uint8 frames as they expect (see the module docstring);
    any other forward gets frames [N, 3, H, W] / clips [N, T, 3, H, W] in [-1, 1] as given. The
    returned callable runs under ``torch.no_grad()`` and returns float [N, D].
    """
    if kind not in _PURPOSE:
        raise ValueError(f"load_feature_net: kind must be 'image' or 'video', got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {_PURPOSE[kind]} not found (a local TorchScript file)")
    device = torch.device(device)
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # zip / pickle errors: a state dict, a pickle or a truncated file
        raise ValueError(f"{path}: cannot load the {_PURPOSE[kind]}: a TorchScript file "
                         f"(torch.jit.save) is expected ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    module.eval()
    return _ScriptedFeatureNet(module, kind, path, device)
