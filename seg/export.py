"""Export a model for deployment: ONNX, TorchScript or a ``torch.export`` program, checked against PyTorch.

    python -m seg.export --ckpt K --format onnx|torchscript|exported --out FILE [--size=[H,W]] [--dynamic]
        [--opset N] [--argmax] [--with_normalize] [--config C] [--mode whole|slide] [--crop_size=[H,W]]
        [--stride=[H,W]]

``K`` is any seg checkpoint (train.py's ``best.ckpt`` / ``last.ckpt``, ``python -m seg.convert`` output), read by
:func:`seg.load_model`: the model and its serving settings come from it (``--config`` replaces the data ones).
The graph is the eval-mode network, one tensor in and one out:

* input: float32 (B, 3, H, W) normalised with the file's ``mean``/``std`` (0-255 RGB:
  ``(rgb - mean) / std``); with ``--with_normalize`` uint8 RGB (B, H, W, 3), normalised inside.
* output: logits (B, num_classes, H, W) at input resolution; with ``--argmax`` int64 class indices (B, H, W).

``--dynamic`` makes batch, H and W symbolic (otherwise the graph is checked at ``--size`` only). The
network is traced under ``seg.layers.functional.export_mode()``: every attention core runs its plain
``*_reference`` formulation (matmul + softmax, no query-chunk loop, SDPA kernel or custom autograd
Function) and logits are resized with ``F.interpolate`` (an ONNX ``Resize``). After writing, the file is
run (ONNX Runtime / ``torch.jit.load`` / ``torch.export.load``) on random inputs at the traced size
(and a second, odd size with ``--dynamic``) and compared with the eager model in its default
(non-export) mode; a relative difference above ``--tolerance`` is an error.

The settings a deployment needs (classes, palette, mean/std, baked normalisation, evaluation resize,
whole/slide, crop, stride, scales, flip) travel inside the file: ONNX ``metadata_props``, or the extra
file ``seg_deploy.json`` of TorchScript / ``torch.export`` archives (``seg.deploy.metadata``).
``python -m seg.predict --onnx FILE IMAGES --out DIR`` runs an ONNX file without PyTorch.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from seg.command_line import ArgParser, UsageError, check_checkpoint_path, hw, usage_exit
from seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from seg.deploy import metadata as deploy_meta
from seg.layers.functional import export_mode
from seg.loading import ModelInfo, load_model
from seg.models import SegmentationModel
from seg.models.inference import EvalSettings
from seg.models.safe_load import CheckpointError
from seg.training.tool_cli import ToolError, config_data_section

__all__ = [
    "DeployModel",
    "FORMATS",
    "deploy_settings",
    "export_model",
    "main",
    "run_exported",
    "save_onnx",
    "trace_program",
    "trace_torchscript",
    "verify_export",
]

PROG = "python -m seg.export"
FORMATS = ("onnx", "torchscript", "exported")
Format = Literal["onnx", "torchscript", "exported"]


class DeployModel(nn.Module):
    """The eval-mode network as one tensor in, one tensor out (see the module docstring for the layouts).

    Args:
        model: the segmentation network (put in eval mode).
        mean, std: 0-255 RGB normalisation, applied inside the graph when ``normalize``.
        normalize: input is uint8 RGB (B, H, W, 3) and the graph normalises it.
        argmax: output class indices (B, H, W) instead of logits (B, C, H, W).
    """

    def __init__(
        self,
        model: SegmentationModel,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        normalize: bool = False,
        argmax: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.normalize = normalize
        self.argmax = argmax
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = x.permute(0, 3, 1, 2).float()  # (B, H, W, 3) uint8 -> (B, 3, H, W) float32
            x = (x - self.mean) / self.std
        logits = self.model(x)["out"]  # (B, C, H, W) fp32
        return logits.argmax(dim=1) if self.argmax else logits

    def example(self, batch: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
        """A random input of this graph's layout and dtype."""
        g = torch.Generator().manual_seed(seed)
        h, w = size
        if self.normalize:
            return torch.randint(0, 256, (batch, h, w, 3), generator=g, dtype=torch.uint8)
        return torch.randn(batch, 3, h, w, generator=g)


# ------------------------------------------------------------------------------------------------
# checkpoint and settings


def deploy_settings(
    info: ModelInfo, data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The inference settings of ``seg.deploy.metadata`` (without the graph's own keys), as ``seg.predict`` uses
    them: the checkpoint's (:class:`seg.loading.ModelInfo`), or, with ``data`` (the data section of a train.py
    config), that data's classes, palette, normalisation and test scale; then ``overrides``."""
    classes, palette, mean, std, test_scale = info.classes, info.palette, info.mean, info.std, info.test_scale
    if data:
        from seg.data import SegDataModule
        from seg.data.datamodule import test_scale_of

        dm = SegDataModule(**data)
        if dm.num_classes != info.num_classes:
            raise ValueError(f"the data has {dm.num_classes} classes, the model {info.num_classes}")
        classes, palette, mean, std = dm.classes, dm.palette, dm.mean, dm.std
        test_scale = test_scale_of(dict(dm.hparams))
    meta = {
        "num_classes": info.num_classes,
        "classes": list(classes),
        "palette": [[int(c) for c in rgb] for rgb in palette],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "test_scale": list(test_scale) if test_scale is not None else None,
        "eval_mode": info.eval["mode"],
        "crop_size": list(info.eval["crop_size"]),
        "stride": list(info.eval["stride"]),
        "scales": [float(s) for s in info.eval["scales"]],
        "flip": bool(info.eval["flip"]),
        "model": info.build,
    }
    meta.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return meta


# ------------------------------------------------------------------------------------------------
# export and verification


def _dynamic_shapes(normalize: bool) -> dict[str, dict[int, Any]]:
    """Batch, H and W symbolic. ``Dim.AUTO`` lets ``torch.export`` narrow a range the model needs (e.g.
    relative positions cover at most ``max_size`` features) instead of failing; a dimension it had to
    freeze shows up in the check at a second size."""
    auto = torch.export.Dim.AUTO
    return {"x": {0: auto, 1: auto, 2: auto} if normalize else {0: auto, 2: auto, 3: auto}}


def trace_program(deploy: DeployModel, size: tuple[int, int], dynamic: bool = False) -> torch.export.ExportedProgram:
    """``torch.export`` of ``deploy`` under ``export_mode()`` at ``size`` (the ONNX exporter starts from it too)."""
    head = deploy.model.head
    if dynamic and not getattr(head, "export_dynamic", True):
        raise ValueError(
            f"{type(head).__name__} cannot be exported with symbolic H and W (see its export_dynamic "
            "note); export it without --dynamic at the size you will run it at (--size H W)"
        )
    # batch 2 when dynamic: torch.export specialises a dimension of size 1 to the constant 1
    example = deploy.eval().example(2 if dynamic else 1, size)
    with torch.no_grad(), export_mode():
        return torch.export.export(
            deploy, (example,), dynamic_shapes=_dynamic_shapes(deploy.normalize) if dynamic else None
        )


def trace_torchscript(deploy: DeployModel, size: tuple[int, int], dynamic: bool = False) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` under ``export_mode()``. Traces record sizes as size ops, so other sizes work too
    (``dynamic`` only picks the example batch, as for ``trace_program``)."""
    example = deploy.eval().example(2 if dynamic else 1, size)
    with torch.no_grad(), export_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        return torch.jit.trace(deploy, (example,), check_trace=False)


def save_onnx(
    program: torch.export.ExportedProgram, out: str | Path, opset: int | None = None, meta: dict[str, Any] | None = None
) -> Path:
    """Convert a traced program to ONNX (one file, weights inside) with ``meta`` in its ``metadata_props``."""
    onnx_program = torch.onnx.export(program, dynamo=True, opset_version=opset, verbose=False, external_data=False)
    onnx_program.model.metadata_props.update(deploy_meta.encode(meta) if meta else {})
    onnx_program.save(str(out), external_data=False)
    return Path(out)


def export_model(
    deploy: DeployModel,
    fmt: Format,
    out: str | Path,
    size: tuple[int, int],
    dynamic: bool = False,
    opset: int | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Trace ``deploy`` under ``export_mode()`` at ``size`` and write it to ``out`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    if fmt == "exported" and out.suffix != ".pt2":
        raise ValueError(f"--out {out}: torch.export archives must end in .pt2 (torch.export.load needs it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {deploy_meta.EXTRA_FILE: json.dumps(meta or {})}
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.save.* is deprecated")
            torch.jit.save(trace_torchscript(deploy, size, dynamic), str(out), _extra_files=extra)
        return out
    program = trace_program(deploy, size, dynamic)
    if fmt == "exported":
        torch.export.save(program, str(out), extra_files=extra)
        return out
    return save_onnx(program, out, opset, meta)


def run_exported(fmt: Format, path: str | Path) -> Any:
    """A callable numpy (or tensor) array -> numpy array for an exported file."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError(
                "verifying an ONNX export needs onnxruntime: pip install -e '.[export]' (or pass --no_verify)"
            ) from err
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: np.asarray(x)})[0]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
        module = torch.jit.load(str(path)) if fmt == "torchscript" else torch.export.load(str(path)).module()

    def run(x):
        with torch.no_grad():
            return module(torch.as_tensor(x)).numpy()

    return run


def verify_export(
    deploy: DeployModel, fmt: Format, path: str | Path, sizes: Sequence[tuple[int, int]], batch: int = 1
) -> list[dict[str, Any]]:
    """Compare the exported file with the eager model (default, non-export mode) on random inputs.

    Returns per size: ``max_abs`` and ``rel`` (max |difference| / max |eager logits|) for logits, or
    ``mismatch`` (fraction of differing labels) for ``--argmax`` graphs.
    """
    run = run_exported(fmt, path)
    rows = []
    for i, size in enumerate(sizes):
        x = deploy.example(batch, size, seed=1 + i)
        with torch.no_grad():
            ref = deploy(x).numpy()
        out = run(x.numpy() if fmt == "onnx" else x)
        if out.shape != ref.shape:
            raise AssertionError(f"{path}: output {out.shape} at input {tuple(x.shape)}, expected {ref.shape}")
        row: dict[str, Any] = {"size": list(size), "batch": batch}
        if deploy.argmax:
            row["mismatch"] = float((out != ref).mean())
        else:
            row["max_abs"] = float(np.abs(out - ref).max())
            row["rel"] = row["max_abs"] / max(float(np.abs(ref).max()), 1e-12)
        rows.append(row)
    return rows


def second_size(size: tuple[int, int]) -> tuple[int, int]:
    """An odd size near ``size`` (checks that a dynamic graph did not freeze the traced size)."""
    return size[0] * 3 // 4 + 1, size[1] * 5 // 4 + 1


# ------------------------------------------------------------------------------------------------
# command line


def build_parser() -> ArgParser:
    p = ArgParser(
        prog=PROG,
        description=__doc__.split("\n")[0] + " Sizes are (H, W), written =[H,W].",
        reference=__doc__,
        pairs=("--size", "--crop_size", "--stride"),
    )
    p.add_argument("--ckpt", required=True, help="training checkpoint, or seg checkpoint (seg.convert output)")
    p.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx (.onnx), torchscript (.pt), exported (torch.export program, .pt2)",
    )
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument(
        "--size",
        type=hw,
        metavar="[H,W]",
        default=None,
        help="input size the graph is traced (and checked) at (default: the slide crop, else [512,1024])",
    )
    p.add_argument("--dynamic", action="store_true", help="symbolic batch, H and W (checked at a second size)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's; 20 with torch 2.14.1)")
    p.add_argument(
        "--argmax",
        action="store_true",
        help="output class indices (B, H, W) instead of logits "
        "(seg.predict --onnx then runs whole images only and resizes labels by nearest neighbour)",
    )
    p.add_argument(
        "--with_normalize", action="store_true", help="bake mean/std in: the input is uint8 RGB (B, H, W, 3)"
    )
    p.add_argument(
        "--config",
        default=None,
        help="train.py YAML whose data section replaces the checkpoint's class names, palette, mean/std and test "
        "scale (only that section is read)",
    )
    p.add_argument("--mode", choices=["whole", "slide"], default=None, help="inference mode recorded in the file")
    p.add_argument("--crop_size", type=hw, metavar="[H,W]", default=None, help="slide crop")
    p.add_argument("--stride", type=hw, metavar="[H,W]", default=None, help="slide stride")
    p.add_argument(
        "--no_verify",
        dest="verify",
        action="store_false",
        help="skip running the written file and comparing it with PyTorch (done by default)",
    )
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative difference to PyTorch allowed")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # before anything is loaded: two lines (what is wrong, what to type), no traceback
        check_checkpoint_path(args.ckpt, PROG, list(sys.argv[1:] if argv is None else argv))
    except UsageError as err:
        usage_exit(err)
    try:
        model, info = load_model(args.ckpt)
        data = config_data_section(args.config) if args.config else None
    except (CheckpointError, ToolError, OSError) as err:
        parser.error(str(err))
    meta = deploy_settings(info, data, {"eval_mode": args.mode, "crop_size": args.crop_size, "stride": args.stride})
    size = tuple(args.size or (meta["crop_size"] if meta["eval_mode"] == "slide" else EvalSettings.crop_size))
    deploy = DeployModel(model, meta["mean"], meta["std"], normalize=args.with_normalize, argmax=args.argmax)
    meta.update(
        normalize_baked=args.with_normalize,
        output="labels" if args.argmax else "logits",
        dynamic=args.dynamic,
        traced_size=list(size),
    )
    t0 = time.perf_counter()
    out = export_model(deploy, args.format, args.out, size, args.dynamic, args.opset, meta)
    seconds = time.perf_counter() - t0
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {args.format}, traced at {size[0]}x{size[1]}"
        f"{', dynamic batch/H/W' if args.dynamic else ''}) in {seconds:.1f} s"
    )
    result: dict[str, Any] = {"out": str(out), "bytes": out.stat().st_size, "export_s": seconds, "checks": []}
    if args.verify:
        sizes = [size, second_size(size)] if args.dynamic else [size]
        result["checks"] = verify_export(deploy, args.format, out, sizes, batch=2 if args.dynamic else 1)
        bad = []
        for row in result["checks"]:
            h, w = row["size"]
            if "rel" in row:
                print(f"  check {row['batch']}x{h}x{w}: max |diff| {row['max_abs']:.3g}, relative {row['rel']:.3g}")
                if not row["rel"] <= args.tolerance:
                    bad.append(row)
            else:
                print(f"  check {row['batch']}x{h}x{w}: {100 * row['mismatch']:.4f}% labels differ")
                if not row["mismatch"] <= 1e-3:
                    bad.append(row)
        if bad:
            raise SystemExit(f"seg.export: {out} differs from PyTorch beyond tolerance {args.tolerance}: {bad}")
    return result


if __name__ == "__main__":
    main()
