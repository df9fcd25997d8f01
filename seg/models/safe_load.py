"""Reading weight files without running code from them: the one place seg calls ``torch.load``.

A ``.ckpt``/``.pth`` is a pickle, and a full unpickle runs whatever code the file names (``os.system``
included). Every file is read with ``torch.load(weights_only=True)``. mmengine/mmcv checkpoints also pickle
training metadata (``message_hub`` ``HistoryBuffer`` objects, numpy scalars); for those an allow-list applies:
numpy's array/scalar/dtype constructors, and *inert stand-ins* (objects that accept and drop any arguments) for
classes of the OpenMMLab packages (``METADATA_MODULES``). Any other global is refused with an error naming it;
nothing in a file is ever executed. Pure torch (no Lightning): the backbone's ``weights`` file, mmseg conversion,
``init_from``, resuming and every command read through here.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["METADATA_MODULES", "CheckpointError", "read_checkpoint", "read_state_dict"]

# Classes of these packages, pickled as checkpoint metadata, are read as inert stand-ins (never imported).
METADATA_MODULES: tuple[str, ...] = ("mmengine", "mmcv", "mmseg", "mmdet", "mmpretrain", "mmcls")
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")  # the global named by torch's weights_only errors


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


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
