"""What a resume (``--ckpt_path``) may change, checked before the run writes anything.

Why: Lightning restores weights, optimizer and LR schedule from the checkpoint whatever the new config says. A
changed network (head, channels, backbone, class count ...) then ends in a raw ``RuntimeError`` from
``load_state_dict`` after ``config.yaml`` was overwritten (the intact ``last.ckpt`` no longer matches its folder's
config), and a changed ``model.lr`` or ``trainer.max_steps`` is silently replaced by the checkpoint's while
``config.yaml`` records the new value. :func:`check_resume` compares the checkpoint with the new config before the
loggers start and before ``config.yaml`` is saved:

* the network (the ``seg`` entry's build arguments, else the hyper-parameters: ``backbone``, ``head``,
  ``head_kwargs``, ``num_classes``, ``output_stride``, ``aux``, ``backbone_kwargs``), the class names,
  ``model.freeze_backbone`` (which parameters the optimizer state covers) and ``data.batch_size`` (the exact-resume
  data position counts batches) must not change: :class:`ResumeConfigError` lists each difference (old -> new) and
  what to do instead;
* ``model.lr``, ``momentum``, ``weight_decay``, ``power``, ``min_lr`` and the poly schedule's length
  (``model.max_iters``, else ``trainer.max_steps``) may change, which is what extending a run needs: they are
  applied from the resumed step on (:class:`ApplyNewSettings` writes them into the restored optimizer and
  schedule) and one line lists them. The LR continues on the new curve at the resumed iteration.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L

from seg.models.checkpoint import META_KEY

from .scheduler import PolyLR

__all__ = ["ApplyNewSettings", "ResumeConfigError", "check_resume", "resume_path"]

NETWORK = ("backbone", "head", "num_classes", "output_stride", "aux", "backbone_kwargs", "aux_channels")
OPTIMISATION = ("lr", "momentum", "weight_decay", "power", "min_lr")
_GROUP_KEYS = ("initial_lr", "momentum", "weight_decay")
_POLY_KEYS = ("base_lrs", "max_iters", "power", "min_lr")


class ResumeConfigError(ValueError):
    """The config changes what a checkpoint cannot resume with."""


def resume_path(ckpt_path: Optional[str], ckpt_dir: Optional[str]) -> Optional[Path]:
    """The file ``--ckpt_path`` names: ``last`` = ``<checkpoint.dirpath>/last.ckpt`` (None if it does not exist:
    Lightning then warns and starts from scratch), another keyword (``best``, ``hpc``) None, else the path."""
    if ckpt_path is None or "://" in ckpt_path:
        return None
    if ckpt_path == "last":
        path = Path(ckpt_dir or ".") / "last.ckpt"
        return path if path.exists() else None
    if ckpt_path in ("best", "hpc", "registry") or ckpt_path.startswith("registry:"):
        return None
    return Path(ckpt_path)


def _plain(value: Any) -> Any:
    """Tuples as lists, so a value read from YAML and one from a checkpoint compare equal."""
    return json.loads(json.dumps(value, default=str))


def _network(hp: dict[str, Any]) -> dict[str, Any]:
    return {**{k: hp[k] for k in NETWORK if k in hp}, **(hp.get("head_kwargs") or {})}


def _name(key: str) -> str:
    if key == "aux_channels":
        return "network.aux_channels"
    return f"model.{key}" if key in NETWORK else f"model.head_kwargs.{key}"


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every key of ``old`` whose value differs (dicts key by key)."""
    out = []
    for key in old:
        a, b = _plain(old[key]), _plain(new.get(key))
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{_name(key)}.{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted({*a, *b}) if a.get(k) != b.get(k)]
        elif a != b:
            out.append(f"{_name(key)} {a!r} -> {b!r}")
    return out


def check_resume(
    path: Path,
    ckpt: dict[str, Any],
    module: L.LightningModule,
    data: Any,
    schedule_iters: Optional[int],
) -> list[str]:
    """Compare checkpoint ``ckpt`` (read from ``path``) with the module and data module built from the new config.

    Args:
        schedule_iters: the poly schedule length the new config gives (``model.max_iters``, else
            ``trainer.max_steps``), None when it is known only once training starts (epoch-based runs).

    Returns:
        the optimisation settings that change (``model.lr 0.02 -> 0.01``), to be applied from the resumed step on.

    Raises:
        ResumeConfigError: the network, the classes, ``model.freeze_backbone`` or ``data.batch_size`` differ.
    """
    old_hp = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if not k.startswith("_")}
    old_data = ckpt.get("datamodule_hyper_parameters") or {}
    meta = ckpt.get(META_KEY) if isinstance(ckpt.get(META_KEY), dict) else {}
    new_hp = dict(module.hparams)
    built = getattr(getattr(module, "model", None), "build_args", None) or _network(new_hp)
    refused = _diff(meta["model"] if isinstance(meta.get("model"), dict) else _network(old_hp), built)
    if any(r.startswith(("model.head ", "model.backbone ")) for r in refused):  # other heads: other arguments
        refused = [r for r in refused if not r.startswith("model.head_kwargs.")]
    old_classes, new_classes = meta.get("classes"), getattr(data, "classes", None)
    same_count = old_classes and new_classes and len(old_classes) == len(new_classes)
    if same_count and list(old_classes) != list(new_classes):
        refused.append(f"classes {list(old_classes)} -> {list(new_classes)}")
    if "freeze_backbone" in old_hp and old_hp["freeze_backbone"] != new_hp.get("freeze_backbone"):
        refused.append(
            f"model.freeze_backbone {old_hp['freeze_backbone']!r} -> {new_hp.get('freeze_backbone')!r} (the "
            "checkpoint's optimizer state covers the other set of parameters)"
        )
    new_bs = getattr(data, "hparams", {}).get("batch_size")
    if "batch_size" in old_data and new_bs is not None and old_data["batch_size"] != new_bs:
        refused.append(
            f"data.batch_size {old_data['batch_size']!r} -> {new_bs!r} (the checkpoint's place in the epoch is "
            f"counted in batches of {old_data['batch_size']})"
        )
    if refused:
        raise ResumeConfigError(
            f"--ckpt_path {path} cannot continue with this config, which changes {'; '.join(refused)}. Nothing was "
            "written. Resume with the checkpoint's values, or start a new run folder (--trainer.default_root_dir) "
            f"that fine-tunes from this checkpoint with --model.init_from={path}"
        )
    applied = [
        f"model.{k} {old_hp[k]!r} -> {new_hp.get(k)!r}"
        for k in OPTIMISATION
        if k in old_hp and old_hp[k] != new_hp.get(k)
    ]
    schedulers = ckpt.get("lr_schedulers") or []
    old_iters = schedulers[0].get("max_iters") if schedulers and isinstance(schedulers[0], dict) else None
    if schedule_iters is not None and old_iters is not None and old_iters != schedule_iters:
        source = "model.max_iters" if new_hp.get("max_iters") else "trainer.max_steps"
        applied.append(f"poly schedule {old_iters} -> {schedule_iters} iterations ({source})")
    return applied


class ApplyNewSettings(L.Callback):
    """On a resume, puts this launch's optimisation settings (see the module docstring) into the optimizer and the
    :class:`PolyLR` schedule that Lightning restored from the checkpoint, and sets the current LR from the new
    curve at the resumed iteration. Does nothing when they are unchanged (a resume stays bit-exact)."""

    def __init__(self) -> None:
        self._resumed = False
        self._fresh: list[tuple[list[dict[str, Any]], Optional[dict[str, Any]]]] = []

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._resumed = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # optimizers and schedulers are configured from the new config here, and restored only after this hook
        schedulers = {id(c.scheduler.optimizer): c.scheduler for c in trainer.lr_scheduler_configs}
        self._fresh = []
        for opt in trainer.optimizers:
            groups = [{k: g[k] for k in _GROUP_KEYS if k in g} for g in opt.param_groups]
            sched = schedulers.get(id(opt))
            poly = {k: list(getattr(sched, k)) if k == "base_lrs" else getattr(sched, k) for k in _POLY_KEYS}
            self._fresh.append((groups, poly if isinstance(sched, PolyLR) else None))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._resumed:
            return
        schedulers = {id(c.scheduler.optimizer): c.scheduler for c in trainer.lr_scheduler_configs}
        for opt, (groups, poly) in zip(trainer.optimizers, self._fresh):
            sched = schedulers.get(id(opt))
            now = [{k: g[k] for k in _GROUP_KEYS if k in g} for g in opt.param_groups]
            same_poly = poly is None or all(_plain(getattr(sched, k)) == _plain(v) for k, v in poly.items())
            if now == groups and same_poly:
                continue
            for group, fresh in zip(opt.param_groups, groups):
                group.update(fresh)
            if poly is not None and isinstance(sched, PolyLR):
                for k, v in poly.items():
                    setattr(sched, k, v)
                with warnings.catch_warnings():  # get_lr outside step() warns; PolyLR's is a closed form of t
                    warnings.simplefilter("ignore")
                    lrs = sched.get_lr()
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr
                sched._last_lr = [group["lr"] for group in opt.param_groups]
