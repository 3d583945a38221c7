"""Normalization layers: PyTorch's, computed another way where that makes training run (batch norm
under DeepSpeed's bf16) or run faster (instance norm), with the same parameters and state dicts.

``BatchNorm2d``: DeepSpeed (0.19) trains in bf16 by casting a module's parameters to bf16 while keeping
its buffers, the running statistics among them, in fp32. CUDA's batch norm takes a bf16 input with a
weight and statistics of one dtype, or with fp32 weight and statistics; with a bf16 weight beside fp32
statistics its forward runs and its backward fails ("Expected running_mean to have type BFloat16 but
got Float": the paper config, ``norm: batch``, its first step on an H200). So the weight and bias are
cast up to the statistics' dtype for the call: the statistics keep fp32 precision, and the gradients
flow back through the cast to the bf16 parameters the optimizer holds. With parameters and statistics
of one dtype this is ``nn.BatchNorm2d`` unchanged.

``InstanceNorm2d``: ``F.instance_norm`` reshapes the batch into one sample of B*C channels, repeats
weight and bias B times and runs a batch norm on that; a group norm with one channel per group
computes the same (per sample and channel, biased variance, ``eps`` inside the root, the same affine
map) in one operator. Measured on the project's 2-core CPU machine (one thread, forward and backward):
2-3x faster at the generator's sizes, and with affine parameters 13 operators dispatched against 19
(tests/unit/models/test_norms.py checks the values against ``nn.InstanceNorm2d``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose affine parameters may be in a lower precision than its statistics."""

    def forward(self, x: Tensor) -> Tensor:
        stats = self.running_mean
        if self.weight is None or stats is None or self.weight.dtype == stats.dtype:
            return super().forward(x)
        # nn.BatchNorm2d's own rule, for the case it leaves here (running statistics tracked).
        self._check_input_dim(x)
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # a cumulative average
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, stats, self.running_var, self.weight.to(stats.dtype), self.bias.to(stats.dtype),
                            self.training, momentum or 0.0, self.eps)


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` without running statistics, as a group norm of one channel per group."""

    def forward(self, x: Tensor) -> Tensor:
        if self.track_running_stats or x.dim() != 4:
            return super().forward(x)
        return F.group_norm(x, x.shape[1], self.weight, self.bias, self.eps)
