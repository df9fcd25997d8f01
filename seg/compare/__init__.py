"""Compare heads with seeds, intervals and cost: ``python -m seg.compare``.

Train every head x seed on the same config and budget, evaluate each run, and compare::

    python -m seg.compare --train --config configs/quickstart.yaml --heads fcn psp danet nonlocal ccnet axial \\
        --seeds 3 [--first_seed 0] [--baseline fcn] [--out runs/compare] [--group NAME] [-- --trainer.max_steps=300 ...]

or compare finished ``train.py`` run directories (the head and seed are read from each run)::

    python -m seg.compare runs/fcn-s0 runs/fcn-s1 runs/danet-s0 runs/danet-s1 --out cmp/

Writes ``compare.md`` (what was compared on what, then tables), ``compare.png`` (the same header; mIoU per head
and seed, the difference to the baseline with its interval and verdict, per-class IoU, peak memory, every cost
relative to the baseline, mIoU against GFLOPs: the Pareto view) and ``compare.json`` (machine-readable: ``runs``
with head, seed, mIoU, per-class IoU and costs per run; ``heads`` with ``mIoU_mean``, ``mIoU_std``, ``n``, costs
and the difference to the baseline with its interval and verdict; ``provenance``: backbone, output stride, steps,
seeds, data, devices, machine, date, seg commit, and ``missing``: what no run recorded).

Evaluation pass. After training, each run's ``checkpoints/last.ckpt`` (the same budget for every head; best.ckpt
would be selected on the very validation set being compared) is evaluated once by ``seg.evaluate``'s own function
(:func:`seg.evaluate.evaluate_checkpoint`, the checkpoint's data and inference settings) on the validation split;
for every image it records the per-class true positives, ground-truth and predicted pixel counts
(``<run>/per_image.npz``, the input of the bootstrap) and the eval images/s (``<run>/eval.json``). Summed over
images these counts are exactly the run's dataset-level confusion-matrix statistics, so the run's mIoU is the
number ``seg.evaluate`` reports for the same checkpoint (and the validation mIoU train.py logged at that step).
Everything about a run (head, backbone, seed, step) comes from its checkpoint; ``summary.json`` (training
throughput, peak CUDA memory) is read when present.

Interval (paired, hierarchical bootstrap, ``--bootstrap`` replicates, default 2000, ``--confidence`` 0.95).
A head's statistic is its mean over seeds of the dataset-level mIoU (each seed's IoU per class recomputed from
that seed's summed per-image counts; classes absent from both ground truth and prediction are left out, as in
:mod:`seg.evaluation`). In every replicate
  1. the validation images are resampled with replacement, once, and the same resample is used for every head
     (paired: image difficulty cancels out of the difference), and
  2. each head's seeds are resampled with replacement, independently per head (so the interval also carries
     the seed-to-seed training noise; with one seed per head this is the plain paired image bootstrap).
The difference of a head to the baseline head is the point estimate ``mIoU_mean(head) - mIoU_mean(baseline)``
with the percentile interval of the replicate differences. Verdict: ``better`` if the whole interval is above
0, ``worse`` if below, else ``within noise``. With few seeds (n=3) the seed part of the interval is somewhat
narrow (the bootstrap's (n-1)/n variance), so read borderline verdicts with care.

Cost, measured in the same runs: parameters (whole network including the training-only aux head), GFLOPs of
one forward pass of one image at the recipe's training crop (eval mode, ``torch.utils.flop_counter`` as in
``seg.bench``; a multiply-add counts 2), train images/s (``summary.json``, after 5 warm-up steps), eval
images/s (the evaluation pass above: images over the wall time of the pass, data loading included) and the
peak memory
of training: CUDA ``max_memory_allocated`` when it trained on a GPU, else the peak RSS (``wait4``: the largest
of the training process and its DataLoader workers).

W&B: with ``--train`` every run of one comparison gets the W&B group ``--group`` (default: the output folder's
name and a timestamp) and, unless ``--wandb=off`` is passed, the summary table and chart are logged once, as
one extra run ``<group>/summary`` in that group.
"""

from __future__ import annotations

from .cli import compare, main
from .runs import evaluate_run, load_run, train_runs
from .stats import compare_to_baseline, summarize

__all__ = ["compare", "compare_to_baseline", "evaluate_run", "load_run", "main", "summarize", "train_runs"]
