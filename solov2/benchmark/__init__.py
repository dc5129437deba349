"""Measured speed of SOLOv2 on this machine, against a floor measured in the same run.

``run_benchmark(BenchmarkOptions(...))`` returns a JSON-ready dict and ``format_report``
prints it. For one preset and input size it times:

- inference at batch 1 and batch N, broken down into preprocess, backbone, FPN, heads, mask
  features and post-processing, the latter at a set load (``loads.crafted_outputs``);
- a training step broken down into data, targets, forward, loss, backward and optimizer;
- peak memory, the FLOPs of every part (``torch.utils.flop_counter``), and optionally the
  network's inference variants and the agreement of bf16 (CPU) / fp16 (CUDA) inference with
  fp32 on a trained model;
- the deformable convolution (v2 and v1) against a plain conv of the same shape (``dcn``).

Every timed item runs right after the floor convolution (``floor``) in the same round and its
ratio to the floor uses the throughput just measured; a reported ratio is the median over
rounds of these per-round ratios, a reported time the median time. The ``dcn`` section
compares with its own ``F.conv2d`` of the same shape, timed in the same rounds, instead.

Modules: ``options`` (what to measure), ``timing`` (clock, rounds, FLOPs, memory), ``floor``,
``loads`` (synthetic inputs), one module per section (``inference``, ``training``,
``variants``, ``agreement``, ``backends``, ``deform``), ``run`` (all sections) and ``report``
(text tables).
"""

from .loads import POSTPROCESS_LOADS, crafted_outputs, synthetic_training_images
from .options import SECTIONS, BenchmarkOptions
from .report import format_report
from .run import run_benchmark

__all__ = [
    "POSTPROCESS_LOADS",
    "SECTIONS",
    "BenchmarkOptions",
    "crafted_outputs",
    "format_report",
    "run_benchmark",
    "synthetic_training_images",
]
