"""VGG19 feature extractor for the perceptual and style losses, torchvision's layer layout.

The layers are numbered as in ``torchvision.models.vgg19().features`` so its state dict
(``features.0.weight`` ...) loads as is, without torchvision. Weights come only from a local file;
nothing is downloaded. Tests use a randomly initialised instance, built explicitly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# torchvision's VGG19 ("E") up to relu5_1: conv widths, "M" for max-pooling.
_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512]
# Exclusive end index (in ``features``) of each slice: relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
_SLICE_ENDS = (2, 7, 12, 21, 30)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """Frozen VGG19; ``forward`` maps RGB in [-1, 1] to the relu1_1..relu5_1 activations."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers[:_SLICE_ENDS[-1]])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        # Always in eval mode: it is a fixed feature extractor, never trained.
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = ((images + 1) / 2 - self.mean) / self.std
        outputs, start = [], 0
        for end in _SLICE_ENDS:
            for layer in self.features[start:end]:
                x = layer(x)
            outputs.append(x)
            start = end
        return outputs


def load_vgg19(path: str | Path) -> VGG19Features:
    """VGG19 features with the weights of torchvision's state dict stored at ``path``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: VGG19 weights not found (loss.vgg_weights)") from err
    except Exception as err:  # pickle / zip errors: a wrong or truncated file
        raise ValueError(f"{path}: not a torch state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = VGG19Features()
    wanted = model.features.state_dict()
    picked = {}
    for key, param in wanted.items():
        full = f"features.{key}"
        if full not in state:
            raise ValueError(f"{path}: missing '{full}': not torchvision's VGG19 state dict")
        if tuple(state[full].shape) != tuple(param.shape):
            raise ValueError(f"{path}: '{full}' has shape {tuple(state[full].shape)}, VGG19 needs "
                             f"{tuple(param.shape)}")
        picked[key] = state[full]
    model.features.load_state_dict(picked)
    return model
