"""train.py's command line before jsonargparse reads it, in seg's convention (:mod:`seg.command_line`).

* ``--help`` is one screen of the options most runs set; ``--help_all`` is jsonargparse's full list (every
  Trainer argument, ~670 lines).
* ``python train.py fit -c ...`` (Lightning's subcommand habit): train.py only fits, so ``fit`` is dropped with
  a one-line note; ``validate`` / ``test`` / ``predict`` name the seg command that does it.
* Dash spellings (``--data.batch-size``) are rewritten with a note; a misspelt key (``--model.hed=danet``)
  stops with the closest valid one and the corrected command.
* A head switched on the command line whose config's ``head_kwargs`` (or output stride) do not fit gets the
  exact command that starts the new head from its own defaults (:func:`head_switch_hint`).

Resuming keeps Lightning's name ``--ckpt_path`` (what Lightning users type, and ``trainer.fit(ckpt_path=)``);
the tools' ``--ckpt`` names the model they use. ``--ckpt`` given to train.py says which one is meant.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from seg.command_line import (
    HELP_ALL,
    UsageError,
    check_flags,
    command,
    help_screen,
    normalize_argv,
    option_value,
    usage_exit,
)

__all__ = ["HELP", "head_switch_hint", "prepare_argv"]

PROG = "python train.py"
USAGE = "python train.py --config CONFIG [--section.key=value ...] [--ckpt_path last|PATH] [--print_config]"
DESCRIPTION = (
    "Train a segmentation model. Every value of the --config YAML can be overridden with a dotted flag "
    "(--model.head=danet); --print_config prints the merged config, head arguments included."
)
HELP: list[tuple[str, str]] = [
    ("-c, --config FILE", "the recipe: configs/<head>.yaml (Cityscapes), configs/ade20k/<head>.yaml, quickstart.yaml"),
    ("--print_config", "print the merged config and exit"),
    ("--ckpt_path last|PATH", "resume exactly (step, optimizer, RNG, data order); last = the run's last.ckpt"),
    ("--seed_everything N", "the seed (default 0)"),
    ("--wandb auto|online|offline|off", "W&B logging (auto: online when logged in, else offline)"),
    ("", "model:"),
    ("--model.head NAME", "fcn, ccnet, danet, ... or smp:<Architecture>; seg.models.all_head_names() lists them"),
    ("--model.head_kwargs={...}", "the head's own arguments, typed by the head; '{}' = its defaults"),
    ("--model.backbone NAME", "a timm backbone: resnet50c, resnet101c, resnet18d, ..."),
    ("--model.output_stride 8|16|32", "the backbone's output stride (dilation)"),
    ("--model.init_from PATH", "start from a checkpoint's weights (fine-tuning; shapes that match)"),
    ("--model.loss NAME", "ce, ohem, dice, focal, lovasz, or sums such as ce+dice"),
    ("--model.lr LR", "SGD learning rate (poly decay)"),
    ("", "data:"),
    ("--data.root DIR", "the dataset folder"),
    ("--data.dataset folder|cityscapes|ade20k", "the dataset type"),
    ("--data.classes=[a,b,...]", "class names (folder datasets)"),
    ("--data.label_map='{255: 1}'", "mask value as stored -> class (0/255 binary masks)"),
    ("--data.batch_size N", "images per batch, per device"),
    ("--data.crop_size=[H,W]", "training crop"),
    ("--data.num_workers N", "DataLoader workers"),
    ("", "trainer (Lightning's Trainer arguments):"),
    ("--trainer.max_steps N", "training iterations"),
    ("--trainer.val_check_interval N", "validate every N steps"),
    ("--trainer.default_root_dir DIR", "the run folder (checkpoints, config.yaml, summary.json)"),
    ("--trainer.devices N", "devices (processes); with --trainer.strategy=ddp"),
    ("--trainer.accelerator cpu|gpu|auto", "where to run"),
    ("--trainer.precision bf16-mixed|32-true", "default: bf16-mixed on a GPU with bf16, else 32-true"),
    ("", ""),
    ("-h, --help", "this help"),
    ("--help_all", "every option (all Trainer arguments, every data and model key)"),
]
FOOTER = (
    "Flags are spelt as the YAML keys, with underscores; lists and (H, W) sizes are list values "
    "(--data.crop_size=[512,1024]). Resuming uses Lightning's --ckpt_path; seg.evaluate, seg.predict and seg.export "
    "take the model as --ckpt. Examples: README.md, docs/guide.md."
)
SUBCOMMANDS = {
    "validate": "python -m seg.evaluate --ckpt runs/<run>/checkpoints/best.ckpt",
    "test": "python -m seg.evaluate --ckpt runs/<run>/checkpoints/best.ckpt --split test",
    "predict": "python -m seg.predict --ckpt runs/<run>/checkpoints/best.ckpt path/to/images --out predictions/",
}


def help_flags() -> list[str]:
    """The flags :data:`HELP` shows (each must be one of train.py's options: a test checks it)."""
    return [t.split("=")[0] for row, _ in HELP for t in row.replace(",", " ").split() if t.startswith("-")]


def _unknown_ckpt(argv: Sequence[str]) -> Optional[UsageError]:
    value = option_value(argv, "--ckpt")
    if value is None:
        return None
    return UsageError(
        "train.py has no --ckpt: resume a run with --ckpt_path (Lightning's name), start from a checkpoint's weights "
        "with --model.init_from",
        f"try: {command(PROG, argv, {'--ckpt': '--ckpt_path', f'--ckpt={value}': f'--ckpt_path={value}'})}",
    )


def prepare_argv(parser: Any, argv: Sequence[str]) -> list[str]:
    """``argv`` ready for ``parser`` (see the module docstring); answers ``--help`` / ``--help_all`` (exit 0) and
    ends the process with two lines for a subcommand seg has elsewhere or an unknown option (exit 2)."""
    argv = list(argv)
    if argv and argv[0] == "fit":
        print("train.py: `fit` is what train.py does; no subcommand needed (ignored)", file=sys.stderr, flush=True)
        argv = argv[1:]
    elif argv and argv[0] in SUBCOMMANDS:
        usage_exit(UsageError(f"train.py only trains; `{argv[0]}` is another command", f"try: {SUBCOMMANDS[argv[0]]}"))
    known = {s for a in parser._actions for s in a.option_strings} | {"--print_config"}
    argv = normalize_argv(argv, known, PROG)
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(help_screen(USAGE, DESCRIPTION, HELP, FOOTER))
        raise SystemExit(0)
    if any(a in HELP_ALL for a in argv):
        parser.print_help()
        raise SystemExit(0)
    try:
        check_flags(argv, known, PROG)
    except UsageError as err:
        usage_exit(_unknown_ckpt(argv) or err)
    return argv


def head_switch_hint(argv: Sequence[str], model: Any) -> Optional[str]:
    """For a ``--model.head`` given on the command line whose config's head arguments or output stride do not fit:
    the command that starts that head from its own defaults (``--model.head_kwargs='{}'``, and for an smp
    architecture the output stride it supports and no aux head), checked to pass; None otherwise."""
    from seg.models import get_head
    from seg.models.registry import config_overrides

    from .head_args import HeadArgumentError, typed_head_kwargs

    if option_value(argv, "--model.head") is None:
        return None
    head = model.head
    try:
        fix = {"head_kwargs": {}, **config_overrides(head, model.output_stride)}
        typed_head_kwargs(head, {})
        get_head(head).check(model.backbone, fix.get("output_stride", model.output_stride))
    except (HeadArgumentError, ValueError):
        return None
    drop = tuple(f"--model.{k}" for k in fix)
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.partition("=")[0]
        if name.startswith(drop):
            skip = "=" not in arg
            continue
        kept.append(arg)
    flags = ["--model.head_kwargs='{}'"]
    flags += [f"--model.{k}={str(v).lower()}" for k, v in fix.items() if k != "head_kwargs" and getattr(model, k) != v]
    return f"to start {head} from its own defaults: {command(PROG, kept)} {' '.join(flags)}"
