"""Checkpoints, one home: read any weight file safely, load it into a model (strict, or partial with a report),
and write checkpoints atomically. Pure torch (no Lightning), used by training, evaluation, conversion and the
backbone's ``weights`` file.

Layout of a *seg checkpoint* (docs/design.md): ``{'state_dict': {'model.<SegmentationModel key>': tensor},
'seg_model': {...}}``. ``state_dict`` matches what the LightningModule saves (it holds the network as
``self.model``); ``seg_model`` holds the ``build_model`` arguments, so ``build_model(**ckpt['seg_model'])``
rebuilds the architecture. Lightning's ``last.ckpt`` / ``best.ckpt`` are seg checkpoints without ``seg_model``.

Why reading is restricted: a ``.ckpt``/``.pth`` is a pickle, and a full unpickle runs whatever code the file
names (``os.system`` included). Every file is read with ``torch.load(weights_only=True)``. mmengine/mmcv
checkpoints also pickle training metadata (``message_hub`` ``HistoryBuffer`` objects, numpy scalars); for those
an allow-list applies: numpy's array/scalar/dtype constructors, and *inert stand-ins* (objects that accept and
drop any arguments) for classes of the OpenMMLab packages (``METADATA_MODULES``). Any other global is refused
with an error naming it; nothing in a file is ever executed.

Why writing is atomic: ``<dir>/.<name>.tmp<pid>`` is written, fsynced and ``os.replace``-d onto the target,
then the directory is fsynced, so the target is always either the previous or the new complete file, also
after a power cut. Temp files of killed processes are removed by :func:`remove_stale_temp_files`.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .segmentation_model import SegmentationModel

__all__ = [
    "CheckpointError",
    "NonFiniteError",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "load_matching",
    "load_seg_checkpoint",
    "load_seg_weights",
    "load_strict",
    "non_finite_keys",
    "read_checkpoint",
    "read_state_dict",
    "remove_stale_temp_files",
    "save_seg_checkpoint",
    "seg_state_dict",
]

PREFIX = "model."
# Classes of these packages, pickled as checkpoint metadata, are read as inert stand-ins (never imported).
METADATA_MODULES: tuple[str, ...] = ("mmengine", "mmcv", "mmseg", "mmdet", "mmpretrain", "mmcls")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")  # the global named by torch's weights_only errors
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


class NonFiniteError(CheckpointError):
    """Weights with NaN/Inf values: refused instead of being saved (or loaded) silently."""


# -- reading ------------------------------------------------------------------------------------------------
class _Inert:
    """Stand-in for a metadata class that is not (and must not be) imported: accepts and drops everything."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _inert_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as pickled for methods in metadata (e.g. ``HistoryBuffer.min``): on inert stand-ins only."""
    if isinstance(obj, _Inert) or isinstance(obj, type) and issubclass(obj, _Inert):
        return _Inert()
    raise pickle.UnpicklingError(f"getattr on {type(obj).__name__} is not allowed in a checkpoint")


def _numpy_globals() -> dict[str, Any]:
    """Constructors numpy arrays, scalars and dtypes are pickled with (numpy 1.x and 2.x module names), and the
    dtype classes (``numpy.dtypes.Float64DType`` ...) that unpickling then builds."""
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core (and warns on it)
    multiarray = core.multiarray

    safe: dict[str, Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        safe[f"{mod}._reconstruct"] = multiarray._reconstruct
        safe[f"{mod}.scalar"] = multiarray.scalar
    safe["numpy.ndarray"] = np.ndarray
    safe["numpy.dtype"] = np.dtype
    for code in np.typecodes["All"]:  # BUILD on a dtype instance checks its class (numpy.dtypes.Float64DType ...)
        cls = type(np.dtype(code))
        safe[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return safe


def _metadata_allow_list(names: list[str]) -> tuple[list[tuple[Any, str]], list[str]]:
    """(entries for ``torch.serialization.safe_globals``, refused names) for the globals a file references."""
    numpy_safe = _numpy_globals()
    entries: list[tuple[Any, str]] = [
        (v, k)
        for k, v in numpy_safe.items()  # dtype classes: never named in a file
        if isinstance(v, type) and issubclass(v, np.dtype) and v is not np.dtype
    ]
    refused = []
    for name in names:
        if name in numpy_safe:
            entries.append((numpy_safe[name], name))
        elif name == "builtins.getattr":
            entries.append((_inert_getattr, name))
        elif name.split(".")[0] in METADATA_MODULES:
            # one subclass per name: weights_only matches BUILD/NEWOBJ targets by identity
            entries.append((type(name.rsplit(".", 1)[-1], (_Inert,), {}), name))
        else:
            refused.append(name)
    return entries, refused


def _best_hint(path: Path) -> str:
    best = path.with_name("best.ckpt")
    if path.name == "last.ckpt" and best.is_file():
        return (
            f" {best} exists: resume from it with --ckpt_path {best} (the best validation, not the latest "
            "step), or start again without --ckpt_path."
        )
    return ""


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """The unpickled content of a PyTorch file (never running code from it; see the module docstring).

    Args:
        path: a ``.ckpt`` / ``.pth`` / ``.pt`` / ``.bin`` file.
        what: how the user passed it (``'--ckpt'``, ``'init_from'`` ...), for error messages.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated or not a PyTorch file, or it references globals outside the
            allow-list (named in the message).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} " + ("is a directory, not a checkpoint file" if path.is_dir() else "does not exist")
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{what}: {path} is empty (0 bytes), probably from an interrupted copy or save; "
            f"copy it again.{_best_hint(path)}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  UnpicklingError, EOFError, KeyError, RuntimeError (zip) ...
        error: Exception = err
    # A valid file with pickled classes (metadata of OpenMMLab checkpoints, or something hostile), or a broken one.
    try:  # zip format: every global at once, without reading the tensors
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001  legacy (pre-1.6) format or not a checkpoint: names come from the errors
        names = []
    tried: set[str] = set()
    for _ in range(64):
        named = _GLOBAL_RE.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
        if named is None and not names:
            raise _unreadable(path, what, error) from None
        if named is not None:
            name = named.group(1) if "." in named.group(1) else f"builtins.{named.group(1)}"  # torch drops builtins.
            if name in tried:  # allowed last time and still failing: not a metadata problem
                raise _unreadable(path, what, error) from None
            if name not in names:
                names.append(name)
        entries, refused = _metadata_allow_list(names)
        tried.update(names)
        if refused:
            raise CheckpointError(
                f"{what}: {path} references Python objects that seg does not unpickle: {', '.join(refused)}. "
                "Loading it fully could run code from the file. If you trust it, extract its weights in a Python "
                "session that has the packages it needs: `c = torch.load(path, weights_only=False); "
                "torch.save({'state_dict': c['state_dict']}, 'weights.pth')`, and pass weights.pth."
            )
        with torch.serialization.safe_globals(entries):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001
                if not isinstance(err, pickle.UnpicklingError) or _GLOBAL_RE.search(str(err)) is None:
                    raise _unreadable(path, what, err) from None
                error = err
    raise _unreadable(path, what, error)


def _unreadable(path: Path, what: str, err: BaseException) -> CheckpointError:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:2] != b"\x80\x02":  # neither torch's zip format nor a legacy pickle
        detail = f"not a PyTorch file: it starts with {head!r}"
    else:
        detail = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}".rstrip(": ")
    return CheckpointError(
        f"{what}: {path} is not a readable PyTorch checkpoint ({detail}); it is truncated, "
        f"corrupt or another kind of file. Check the path, or copy the file again."
        f"{_best_hint(path)}"
    )


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, Tensor]:
    """A bare state dict from any weight file: ``.safetensors``, a state dict, or a dict wrapping one under
    ``'state_dict'`` or ``'model'`` (``module.`` prefixes of DDP removed). Keys are kept as they are."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path} does not exist")
        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{what}: {path} is not a readable safetensors file ({err})") from None
    else:
        state = read_checkpoint(path, what)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{what}: {path} holds no state dict (got {type(state).__name__})")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{what}: {path}: state dict entries are not tensors: {bad[:10]}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def seg_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, Tensor]:
    """The network weights of a seg checkpoint (``model.`` prefix removed); a bare state dict is taken as is."""
    state = read_state_dict(path, what)
    if any(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    return state


# -- loading into a model -----------------------------------------------------------------------------------
def load_strict(model: nn.Module, state: dict[str, Tensor], source: str, hint: str = "") -> None:
    """Load every tensor, or raise one ``CheckpointError`` listing every missing / unexpected / mis-shaped key
    and ``hint`` (what to check), instead of torch's bare ``RuntimeError``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or wrong:
        args = getattr(model, "build_args", None)
        target = f"build_model({', '.join(f'{k}={v!r}' for k, v in args.items())})" if args else "the model"
        lines = [f"{source} does not fit {target}:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys (in the model, not in the checkpoint): {missing}")
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys (in the checkpoint, not in the model): {unexpected}")
        if wrong:
            lines.append(f"  {len(wrong)} shape mismatches: {wrong}")
        if hint:
            lines.append(f"  {hint}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def load_matching(model: nn.Module, state: dict[str, Tensor]) -> dict[str, list[str]]:
    """Load the tensors whose name and shape match ``model``; the rest keep their initialisation.

    Returns ``{'loaded', 'shape_mismatch', 'missing', 'unexpected'}`` key lists (shape mismatches are typically
    the classifiers of a different class count, which stay freshly initialised).
    """
    own = model.state_dict()
    loaded, mismatch = {}, []
    for k, v in state.items():
        if k in own:
            if own[k].shape == v.shape:
                loaded[k] = v
            else:
                mismatch.append(f"{k} {tuple(v.shape)} -> {tuple(own[k].shape)}")
    model.load_state_dict(loaded, strict=False)
    return {
        "loaded": sorted(loaded),
        "shape_mismatch": mismatch,
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
    }


def load_seg_weights(model: nn.Module, path: str | Path, what: str = "--ckpt", hint: str = "") -> None:
    """Strictly load a seg checkpoint (``last.ckpt``, ``best.ckpt``, ``seg.convert`` output) into ``model``."""
    state = read_state_dict(path, what)
    if not any(k.startswith(PREFIX) for k in state):
        raise CheckpointError(
            f"{what}: {path} has no 'model.*' weights: not a seg checkpoint (convert mmseg "
            "checkpoints with `python -m seg.convert mmseg`)"
        )
    state = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    bad = non_finite_keys(state)
    if bad:
        raise NonFiniteError(
            f"{what}: {path} has NaN/Inf weights in {len(bad)} tensors ({bad[:5]}): it comes from "
            "a diverged run; use an earlier checkpoint"
        )
    load_strict(model, state, f"{what} {path}", hint)


def load_seg_checkpoint(path: str | Path) -> "SegmentationModel":
    """Rebuild and load a model from a checkpoint with ``seg_model`` (eval mode)."""
    from .segmentation_model import build_model  # here, not on top: backbone.py imports this module

    path = Path(path)
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "seg_model" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a standalone seg checkpoint (needs 'state_dict' and 'seg_model' "
            "entries, as written by `python -m seg.convert`)"
        )
    model = build_model(**ckpt["seg_model"])
    load_seg_weights(model, path, what="checkpoint")
    return model.eval()


# -- writing ------------------------------------------------------------------------------------------------
def non_finite_keys(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors holding NaN or Inf."""
    return [
        k
        for k, v in state.items()
        if isinstance(v, Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def _no_space(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _fsync_dir(directory: Path) -> None:
    try:  # make the rename itself durable (not supported on every OS / filesystem)
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on ``<dir>/.<name>.tmp<pid>``, fsync it, rename it onto ``path``, fsync the folder.

    On any failure the temp file is removed and ``path`` is untouched; a full disk raises one ``OSError``
    (ENOSPC) naming the file and the free space, instead of torch's ``inline_container.cc`` message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and _no_space(err):
            free = shutil.disk_usage(path.parent).free
            raise OSError(
                errno.ENOSPC,
                f"cannot write {path}: no space left on device ({free / 2**20:.0f} MiB free "
                f"in {path.parent}). Free some space or write to another disk (for training: "
                "--checkpoint.dirpath); the previous file, if any, is intact",
            ) from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | Path, require_finite: bool = True) -> Path:
    """``torch.save`` through :func:`atomic_write`. With ``require_finite``, a ``state_dict`` (``obj`` or
    ``obj['state_dict']``) holding NaN/Inf raises :class:`NonFiniteError` and nothing is written."""
    if require_finite and isinstance(obj, dict):
        state = obj.get("state_dict", obj)
        bad = non_finite_keys(state) if isinstance(state, dict) else []
        if bad:
            raise NonFiniteError(
                f"refusing to write {path}: {len(bad)} tensors hold NaN/Inf ({bad[:5]}); the run "
                "diverged (lower the learning rate, check the data)"
            )
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write a text file (``summary.json``, ``metrics.json``) through :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete ``.<name>.tmp<pid>`` files of :func:`atomic_write` whose process is gone (killed mid-save)."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TMP_RE.match(p.name)
        if m is None or not p.is_file():
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live process may be writing it
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_seg_checkpoint(model: "SegmentationModel", path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a standalone seg checkpoint (with ``seg_model``), atomically."""
    if not model.build_args:
        raise ValueError("model.build_args is empty: build the model with seg.models.build_model")
    ckpt = {
        "state_dict": {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "seg_model": dict(model.build_args),
        **(extra or {}),
    }
    return atomic_save(ckpt, path)
