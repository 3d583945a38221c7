"""``torch.compile`` of a model's repeated blocks in place, with fixed shapes (``train.compile``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

# Inductor reads the force only where layout optimization is on (off by default on ROCm).
_FORCED_CHANNELS_LAST = {"layout_optimization": True, "force_layout_optimization": True}


def compile_each(modules: Sequence[nn.Module], mode: str = "default", backend: str | Callable = "inductor",
                 variants: int = 16, channels_last: bool = False) -> None:
    """Compile each of ``modules``' calls in place (``nn.Module.compile``: parameter names and state
    dicts unchanged), one graph per input shape. ``variants``: the input variants one module may see
    (shapes, training or ``no_grad``, frozen or trainable weights). Modules of one class share one
    code object, whose recompiles dynamo counts together: past its limit (8 by default) it runs them
    eagerly with only a logged warning, so the limit is raised to cover them all.

    ``channels_last`` (``train.channels_last``): inductor lays every graph's convolutions out
    channels-last, weights converted inside the graph (the parameters keep their
    layout, so any ZeRO stage holds them as before). Inductor decides this per graph; on a GPU its rule
    for training graphs declines any graph holding a convolution with at least twice as many input
    channels as output channels and a kernel taller than 1, which every training graph of these models
    probed held (a decoder's narrowing convolutions, the 3-channel heads, each PatchGAN's last layer), so the
    choice is forced here, and layout optimization switched on where it is off by default (ROCm).
    Inductor's source says that rule exists because the layout made pix2pix-like networks slower:
    forcing it is a measured choice or none (``benchmarks/gpu_check.sh`` check 5). Not in
    eager: PyTorch's CUDA reflection padding and group norm take NCHW only, so each would convert the
    layout back (docs/performance.md)."""
    import torch._dynamo
    import torch._inductor

    if channels_last and backend != "inductor":
        raise ValueError(f"channels_last needs the inductor backend, which lays the graphs out; got {backend!r}")
    limit = variants * len(modules)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    if channels_last:  # torch.compile takes a mode or inductor options, not both: the mode as its options
        how = {"options": {**torch._inductor.list_mode_options(mode), **_FORCED_CHANNELS_LAST}}
    else:
        how = {"mode": None if mode == "default" else mode}
    for module in modules:
        module.compile(backend=backend, dynamic=False, **how)
