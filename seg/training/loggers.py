"""Loggers of a run: CSV always, W&B online when the user is logged in, else offline (sync later).

``--wandb auto`` (default) honours ``WANDB_MODE`` if set, otherwise goes online when an API key is found
(``WANDB_API_KEY`` or the netrc entry ``wandb login`` writes) and offline otherwise, printing one line with
the ``wandb sync`` command. ``--wandb off`` disables W&B. The W&B run id is kept in ``<run_dir>/wandb_id``
so that a resumed run (``--ckpt_path last``) continues the same W&B run. ``WANDB_RUN_GROUP`` (set by
``seg.compare --train`` for all runs of one comparison) puts the run in that W&B group.
:class:`ValImageLogger` adds validation images with predicted and true masks to the W&B run.

``wandb: off`` written in YAML is read as ``False`` (YAML 1.1 booleans), ``on``/``yes`` as ``True``:
:func:`wandb_mode` reads them as ``off`` and ``auto``. ``train.py`` ends the W&B run itself (:func:`finish_wandb`):
left to wandb's exit hook, the closing lines are written with terminal colours into log files too.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
import uuid
from pathlib import Path
from typing import Any, Literal, Optional, Union
from urllib.parse import urlparse

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

WandbMode = Literal["auto", "online", "offline", "off"]


def wandb_mode(value: Union[WandbMode, bool]) -> WandbMode:
    """``--wandb`` as given: the YAML booleans ``off``/``false`` mean ``off``, ``on``/``true``/``yes`` ``auto``."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return value


def wandb_logged_in() -> bool:
    """True when W&B has credentials: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_wandb_mode(mode: WandbMode) -> Literal["online", "offline", "off"]:
    """The effective W&B mode for ``--wandb``."""
    if mode == "off":
        return "off"
    if importlib.util.find_spec("wandb") is None:
        if mode != "auto":
            raise RuntimeError("--wandb needs the wandb package: pip install wandb")
        return "off"
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("disabled", "off"):
        return "off"
    if env in ("offline", "dryrun"):
        return "offline"
    if env == "online":
        return "online"
    return "online" if wandb_logged_in() else "offline"


def run_identity(
    head: str, backbone: str, dataset: str, root: Optional[str] = None, seed: Optional[int] = None
) -> dict[str, Any]:
    """How a training run appears in W&B: the name ``<head>-<backbone>-s<seed>`` (``-s<seed>`` left out when the
    run is not seeded), tags ``head:H``, ``backbone:B``, ``dataset:D``, ``seed:S`` to filter and group by, and
    the seed at the top level of the config (Lightning logs the model's and data's arguments there too).

    dataset, root: the data section's; a folder dataset is named after its folder (``demo``, ``custom``).
    seed: None = the seed of Lightning's ``seed_everything`` (``PL_GLOBAL_SEED``, set before the loggers are
    built), if any."""
    if dataset == "folder" and root:
        dataset = Path(str(root)).name
    if seed is None and os.environ.get("PL_GLOBAL_SEED") is not None:
        seed = int(os.environ["PL_GLOBAL_SEED"])
    tags = [f"head:{head}", f"backbone:{backbone}", f"dataset:{dataset}"]
    tags += [f"seed:{seed}"] if seed is not None else []
    name = f"{head}-{backbone}" + (f"-s{seed}" if seed is not None else "")
    return {"name": name, "tags": [t[:64] for t in tags], "config": {"seed": seed}}  # W&B tags: 64 chars at most


def build_loggers(
    run_dir: str | Path,
    wandb: WandbMode = "auto",
    project: str = "seg",
    name: Optional[str] = None,
    resume: bool = False,
    group: Optional[str] = None,
    identity: Optional[dict[str, Any]] = None,
    job_type: str = "train",
) -> list[Logger]:
    """CSV (``<run_dir>/csv/version_N/metrics.csv``, one version per launch) + W&B (``<run_dir>/wandb``).

    name: the W&B run name; None = ``WANDB_NAME`` if set, else ``identity``'s name, else the run folder's name.
    group: W&B group (runs of one comparison); None = ``WANDB_RUN_GROUP`` if set.
    identity: :func:`run_identity` (name, tags, config entries) of the run.
    job_type: W&B job type (``train``).

    W&B's summary keeps the *best* ``val/mIoU`` (``define_metric(summary="max")``), not the last, and W&B prints
    only what matters (``quiet``; ``SEG_VERBOSE=1`` gives its full output)."""
    run_dir = Path(run_dir)
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv")]
    mode = resolve_wandb_mode(wandb)
    if mode == "off":
        return loggers

    # W&B only creates the run on rank 0; a resumed launch (ckpt_path) continues the previous W&B run.
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]
        if rank_zero_only.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
    import wandb as wandb_lib

    from .console import verbose_requested

    identity = identity or {}
    logger = SegWandbLogger(
        project=project,
        name=name or os.environ.get("WANDB_NAME") or identity.get("name") or run_dir.name,
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",
        offline=(mode == "offline"),
        group=group or os.environ.get("WANDB_RUN_GROUP") or None,
        tags=identity.get("tags") or None,
        job_type=job_type,
        config=identity.get("config") or None,
        settings=wandb_lib.Settings(quiet=not verbose_requested()),
    )
    # Lightning always passes `anonymous` (None unless asked), and wandb >= 0.19 warns on every run that the
    # setting has no effect: leave it out
    logger._wandb_init.pop("anonymous", None)
    loggers.append(logger)
    if mode == "offline":
        rank_zero_info(
            f"wandb: not logged in, logging offline to {run_dir / 'wandb'}; upload later with: "
            f"wandb sync {run_dir / 'wandb'}/offline-run-*"
        )
    return loggers


def finish_wandb(loggers: list[Logger], exit_code: int = 0) -> list[str]:
    """End the W&B runs of ``loggers`` that were started (rank 0's), marking a non-zero ``exit_code`` as failed.
    Returns where each run is: its URL (online) or the ``wandb sync`` command that uploads it (offline), for the
    closing block of train.py.

    Why here and not at interpreter exit: wandb's exit hook prints its closing lines (the sync command, the log
    folder) with terminal colours even into a log file; ``finish()`` prints them through ``click``, which drops the
    colours when the output is not a terminal."""

    places = []
    for logger in loggers:
        run = getattr(logger, "_experiment", None) if isinstance(logger, WandbLogger) else None
        if run is not None and hasattr(run, "finish"):
            offline = run.settings.mode in ("offline", "dryrun")
            sync_dir = getattr(run.settings, "sync_dir", None)
            url = None if offline else getattr(run, "url", None)
            run.finish(exit_code=exit_code)
            if url:
                places.append(f"W&B run {run.name}: {url}")
            elif sync_dir:
                places.append(f"W&B run {run.name} (offline); upload with: wandb sync {sync_dir}")
    return places


class SegWandbLogger(WandbLogger):
    """Lightning's W&B logger whose run keeps the best ``val/mIoU`` in its summary (the metric is defined on the
    global step, as Lightning defines every metric)."""

    @property
    def experiment(self) -> Any:
        first = self._experiment is None
        run = super().experiment
        if first and rank_zero_only.rank == 0 and hasattr(run, "define_metric"):
            run.define_metric("val/mIoU", step_metric="trainer/global_step", step_sync=True, summary="max")
        return run


class ValImageLogger(L.Callback):
    """Logs the first ``num_images`` validation images with predicted and ground-truth masks (class names as
    labels) to every W&B logger at each validation (rank 0's shard)."""

    def __init__(self, num_images: int = 4) -> None:
        self.num_images = num_images
        self._images: list[Any] = []

    @staticmethod
    def _wandb_loggers(trainer: L.Trainer) -> list[Any]:

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._images = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            trainer.sanity_checking
            or trainer.global_rank != 0
            or not isinstance(outputs, dict)
            or len(self._images) >= self.num_images
            or not self._wandb_loggers(trainer)
        ):
            return
        import cv2
        import numpy as np
        import wandb

        dm = trainer.datamodule
        mean = torch.tensor(getattr(dm, "mean", (123.675, 116.28, 103.53))).view(3, 1, 1)
        std = torch.tensor(getattr(dm, "std", (58.395, 57.12, 57.375))).view(3, 1, 1)
        labels = dict(enumerate(pl_module.class_names))
        labels[255] = "ignore"
        for i in range(min(batch["image"].shape[0], self.num_images - len(self._images))):
            img = (batch["image"][i].float().cpu() * std + mean).clamp(0, 255).byte().permute(1, 2, 0).numpy()
            pred = outputs["preds"][i].cpu().numpy().astype(np.uint8)
            gt = batch["mask"][i].cpu().numpy().astype(np.uint8)
            if "img_shape" in batch:  # eval images are at the test scale, masks at the original size: crop, resize
                (h, w), (oh, ow) = batch["img_shape"][i].tolist(), batch["ori_shape"][i].tolist()
                img, pred, gt = cv2.resize(np.ascontiguousarray(img[:h, :w]), (ow, oh)), pred[:oh, :ow], gt[:oh, :ow]
            self._images.append(
                wandb.Image(
                    img,
                    caption=Path(batch["path"][i]).name,
                    masks={
                        "prediction": {"mask_data": pred, "class_labels": labels},
                        "ground_truth": {"mask_data": gt, "class_labels": labels},
                    },
                )
            )

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._images:
            for lg in self._wandb_loggers(trainer):
                lg.log_image(key="val/examples", images=self._images, step=trainer.global_step)
        self._images = []
