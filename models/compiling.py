"""``torch.compile`` of a model's repeated blocks in place, with fixed shapes (``train.compile``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def compile_each(modules: Sequence[nn.Module], mode: str = "default", backend: str | Callable = "inductor",
                 variants: int = 16) -> None:
    """Compile each of ``modules``' calls in place (``nn.Module.compile``: parameter names and state
    dicts unchanged), one graph per input shape. ``variants``: the input variants one module may see
    (shapes, training or ``no_grad``, frozen or trainable weights). Modules of one class share one
    code object, whose recompiles dynamo counts together: past its limit (8 by default) it runs them
    eagerly with only a logged warning, so the limit is raised to cover them all."""
    import torch._dynamo

    limit = variants * len(modules)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    for module in modules:
        module.compile(backend=backend, mode=None if mode == "default" else mode, dynamic=False)
