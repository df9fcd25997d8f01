"""`python -m seg.bench`: speed and memory of seg's attention cores and whole models.

Three parts, printed as tables and written as JSON + Markdown (default: cores + models on CUDA, infer on CPU):

* **cores** - each functional attention core (`position_attention` as used by DANet's PAM and by
  Non-local, `criss_cross_attention`, `axial_attention`, `channel_attention`): forward and
  forward+backward time and peak memory, seg's implementation against the explicit-energy
  reference (the formulation mmseg/mmcv compute), at Cityscapes training shapes
  (B=8, 512 channels, 64x128 features) and whole-image inference shapes (B=1, 128x256 features).
* **models** - whole-model training throughput (img/s) and peak memory for every head on R50-D8
  at 512x1024, batch 8: "explicit fp32 eager" (what mmseg runs by default: explicit attention
  energies, fp32, NCHW, F.interpolate + F.cross_entropy) against seg's default fast path (bf16
  autocast, channels_last, cuDNN benchmark, fused attention, the training loss of ``train.py``:
  fused resize + cross-entropy). Also whole-image inference memory (1024x2048) and the fraction of
  the GPU's dense bf16 FLOP/s the training step reaches.
* **infer** - per head, whole-image inference of one image (R50-D8, 512x1024; ``--infer_size``): the model as
  built (fp32, NCHW, BN unfused) against ``seg.models.optimize_for_inference`` (BN folded into the convs,
  channels_last, ``F.interpolate`` logit resize on CPU; ``--no_fuse_bn``, ``--no_channels_last``, ``--bf16``),
  ms per image and peak memory, with the largest logit difference and the argmax agreement of the two
  (``run_infer_opt_case``). Against mmseg itself: ``scripts/cpu_inference_vs_mmseg.py``.

`--onnx` (needs the ``export`` extra) instead times whole-image inference per head in ONNX Runtime (CPU)
beside PyTorch eager (fp32, CPU) on the same random-init model, with the ``.onnx`` file size and the
largest difference of the two outputs (``run_onnx_case``).

`--quick` shrinks every shape (small backbone, small features) so the whole run takes about a
minute on a CPU; its numbers only show that the harness works.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` above what was allocated before the
measured call. On CPU, the peak of the bytes malloc holds (glibc ``mallinfo2``), sampled after
every aten op of the call, above what it held before: allocated memory, like CUDA's figure (so
cases can share one process; ``--quick`` takes about 35 s on 2 cores). Where ``mallinfo2`` is
missing, and for compiled models, each case runs in a fresh subprocess and reports the growth of
its peak resident set size (VmHWM, reset just before the call), which also counts pages malloc
has freed but kept.

`--bf16` runs seg's path under bf16 autocast on the CPU too (on CUDA it always does): a CPU proxy
for the memory of the GPU fast path.

The package, one concern per module: ``timing`` (median wall time), ``memory`` (peak memory), ``result`` (one
row), ``cores``, ``models`` and ``inference`` (the cases), ``flops`` (useful FLOPs, GPU peaks), ``onnx_case`` (``--onnx``),
``report`` (Markdown), ``cli`` (``run`` and the command line).
"""

from __future__ import annotations

from .cli import HEADS, main, run
from .cores import core_cases, run_core_case
from .flops import GPU_BF16_PEAK, forward_flops
from .inference import run_infer_opt_case
from .memory import cpu_alloc_peak_mb, in_subprocess, malloc_in_use, peak_mb
from .models import build, mmseg_loss, run_infer_case, run_train_case, train_shape
from .onnx_case import run_onnx_case
from .report import to_markdown
from .result import Result
from .timing import time_call

__all__ = [
    "GPU_BF16_PEAK",
    "HEADS",
    "Result",
    "build",
    "core_cases",
    "cpu_alloc_peak_mb",
    "forward_flops",
    "in_subprocess",
    "main",
    "malloc_in_use",
    "mmseg_loss",
    "peak_mb",
    "run",
    "run_core_case",
    "run_infer_case",
    "run_infer_opt_case",
    "run_onnx_case",
    "run_train_case",
    "time_call",
    "to_markdown",
    "train_shape",
]
