"""A config file may name seg's, torch's and Lightning's classes only: checked before jsonargparse reads it.

Why: jsonargparse imports the module of every ``class_path`` (``trainer.callbacks: [{class_path: evil.Cb}]``) and of
every dotted name given for a class-typed option (``callbacks: [evil.Cb]``) *before* it checks the type, and under
``python -m`` the current directory is on ``sys.path``: a downloaded run folder with an ``evil.py`` next to its
``config.yaml`` runs that file. :func:`check_arguments` reads every config the command line names with
``yaml.safe_load`` (no code runs): ``--config`` files (one or several), files given as values
(``--trainer=trainer.yaml``), files such a config names (``trainer: trainer.yaml``), and YAML given inline. It
refuses

* a ``class_path`` (at any depth, ``init_args`` included) outside :data:`ALLOWED`, and
* any other dotted string whose top-level package is outside :data:`ALLOWED` and importable (a class shorthand
  jsonargparse would import; the test is ``importlib.util.find_spec`` of the top-level name, which locates
  without importing, so data paths and timm names such as ``resnet50.a1_in1k`` pass).

Nothing is imported before the refusal.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

__all__ = ["ALLOWED", "ConfigCodeError", "check_arguments", "check_object"]

ALLOWED = ("seg.", "torch.", "lightning.", "pytorch_lightning.", "lightning_fabric.", "torchmetrics.")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_MAX_CONFIG_BYTES = 16 * 2**20  # larger files are data or weights, not configs


class ConfigCodeError(ValueError):
    """A config names code outside :data:`ALLOWED`."""


def _allowed(name: str) -> bool:
    return name.startswith(ALLOWED)


def _importable_elsewhere(value: str) -> bool:
    top = value.split(".", 1)[0]
    if _allowed(top + "."):
        return False
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _exists(value: str, base: Optional[Path]) -> bool:
    """A file name such as ``timm.pth`` is a path, not a class."""
    return Path(value).exists() or (base is not None and (base / value).exists())


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, value) of every leaf of a YAML document: ``trainer.callbacks[0].class_path``."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, obj


def _config_file(value: str, base: Optional[Path]) -> Optional[Path]:
    """The text file ``value`` names (relative to the current directory or to ``base``, the folder of the config
    that names it), if it is one jsonargparse could read as a config."""
    if not value or "\n" in value or len(value) > 4096:
        return None
    for candidate in [Path(value)] + ([base / value] if base is not None else []):
        try:
            if candidate.is_file() and candidate.stat().st_size <= _MAX_CONFIG_BYTES:
                head = candidate.open("rb").read(8192)
                if b"\0" not in head:
                    return candidate
        except OSError:
            continue
    return None


class _Scanner:
    def __init__(self) -> None:
        self.seen: set[Path] = set()

    def check_text(self, text: str, source: str, base: Optional[Path]) -> None:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError:
            return  # not YAML: jsonargparse reports it, importing nothing
        self.check_doc(doc, source, base)

    def check_file(self, path: Path) -> None:
        resolved = path.resolve()
        if resolved in self.seen:
            return
        self.seen.add(resolved)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            return
        self.check_text(text, str(path), path.parent)

    def check_doc(self, doc: Any, source: str, base: Optional[Path]) -> None:
        for key, value in _walk(doc):
            if not isinstance(value, str):
                continue
            is_class_path = key == "class_path" or key.endswith(".class_path")
            if is_class_path and "." in value and not _allowed(value):
                raise ConfigCodeError(_message(source, key, value))
            if not is_class_path and _DOTTED.match(value) and _importable_elsewhere(value) and not _exists(value, base):
                raise ConfigCodeError(_message(source, key, value))
            nested = None if is_class_path else _config_file(value, base)
            if nested is not None:
                self.check_file(nested)


def _message(source: str, key: str, value: str) -> str:
    module = value.rsplit(".", 1)[0]
    where = f"{key}: " if key else ""
    return (
        f"{source}: {where}{value!r} names code outside seg, torch and Lightning; reading the config would import "
        f"(run) {module}. Nothing was imported. A config may only name classes under {', '.join(ALLOWED)}: "
        "remove that entry"
    )


def check_arguments(argv: list[str]) -> None:
    """Raise :class:`ConfigCodeError` if a config named by the command line ``argv`` (``--config`` files, files or
    inline YAML given as option values, and the files those name) names code outside :data:`ALLOWED`."""
    scanner = _Scanner()
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
        elif not arg.startswith("--") and i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]:
            option, value = argv[i - 1], arg
        else:
            continue
        path = _config_file(value, None)
        if path is not None:
            scanner.check_file(path)
        else:
            scanner.check_text(value, f"the value of {option.rstrip('+')}", None)


def check_object(obj: Any, source: str = "the config") -> None:
    """:func:`check_arguments` for a config given as a dict (``SegCLI(args={...})``)."""
    _Scanner().check_doc(obj, source, None)
