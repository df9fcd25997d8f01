"""The one command-line convention of seg's commands, and the checks each makes before it loads anything.

Torch-free (``python -m seg.predict --onnx`` uses it). The convention (docs/guide.md, "Command lines"):

* Multi-word flags use underscores, as train.py's YAML keys do: ``--crop_size``, ``--max_pixels``,
  ``--num_classes``. A dash spelling (``--crop-size``) still works for one release, with a one-line note on
  stderr (:func:`normalize_argv`).
* (H, W) pairs and other lists are list values, as in the YAML: ``--crop_size=[512,1024]``,
  ``--scales=[0.5,1.0]``. Two bare numbers (``--crop_size 512 1024``) still work for one release, with a note.
* ``--help`` shows the options that matter for the command (a screen); ``--help_all`` shows every option.
* A user error is two lines on stderr, ``error: <what is wrong>`` and what to type instead, and exit status 2
  (:class:`UsageError`, :func:`usage_exit`): no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Iterable, NoReturn, Optional, Sequence

__all__ = [
    "ArgParser",
    "HELP_ALL",
    "REMOTE_CHECKPOINTS",
    "UsageError",
    "check_checkpoint_path",
    "check_flags",
    "check_input_path",
    "closest",
    "command",
    "help_screen",
    "hw",
    "normalize_argv",
    "option_value",
    "positionals",
    "usage_exit",
]

HELP_ALL = ("--help_all", "--help-all")
# checkpoint names seg.loading resolves itself (model zoo names, downloads): passed through unchecked
REMOTE_CHECKPOINTS = ("mmseg:", "http://", "https://")


class UsageError(ValueError):
    """A user error: ``message`` says what is wrong, ``hint`` what to type instead (one line each)."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def usage_exit(err: UsageError) -> NoReturn:
    """Two lines on stderr (``error: ...`` and the hint), exit status 2."""
    sys.stderr.write(f"error: {err.message}\n{err.hint}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def command(prog: str, argv: Sequence[str], replace: Optional[dict[str, str]] = None) -> str:
    """``prog`` and ``argv`` as a shell command line, with the tokens of ``replace`` swapped."""
    replace = replace or {}
    return " ".join([prog, *(shlex.quote(replace.get(a, a)) for a in argv)])


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """The known name nearest to ``name`` (difflib), or None when none is near."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def _note(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _known(name: str, known: set[str]) -> bool:
    """``name`` is an option, or a key below a dotted one (``--model.head_kwargs.channels``, ``--data.classes+``;
    not below a section's own config flag, ``--model``)."""
    name = name.rstrip("+")
    return name in known or any(name.startswith(k + ".") for k in known if "." in k)


def normalize_argv(argv: Sequence[str], known: Iterable[str], prog: str, pairs: Iterable[str] = ()) -> list[str]:
    """``argv`` in the convention's spelling, with a one-line note on stderr for each old spelling rewritten:
    ``--crop-size`` -> ``--crop_size`` (when that is a ``known`` option), ``--size 512 1024`` ->
    ``--size=[512,1024]`` (for the options in ``pairs``). Stops at ``--`` (what follows is another command's)."""
    known, pairs = set(known), set(pairs)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return out + list(argv[i:])
        name, eq, value = arg.partition("=")
        if name.startswith("--") and "-" in name[2:] and name not in HELP_ALL and not _known(name, known):
            fixed = "--" + name[2:].replace("-", "_")
            if _known(fixed, known):
                _note(prog, f"{name} is spelt {fixed} now (the dash spelling goes in the next release)")
                name, arg = fixed, fixed + eq + value
        if name in pairs and not eq and len(argv) >= i + 3 and all(_number(a) for a in argv[i + 1 : i + 3]):
            a, b = argv[i + 1 : i + 3]
            _note(prog, f"{name} {a} {b} is written {name}=[{a},{b}] now (two bare numbers go in the next release)")
            out.append(f"{name}=[{a},{b}]")
            i += 3
            continue
        out.append(arg)
        i += 1
    return out


def check_flags(argv: Sequence[str], known: Iterable[str], prog: str) -> None:
    """Raises :class:`UsageError` for the first ``--flag`` of ``argv`` that is not a ``known`` option (or a key
    below one), naming the closest valid one and the corrected command. Stops at ``--``."""
    known = set(known)
    for arg in argv:
        if arg == "--":
            return
        name = arg.partition("=")[0]
        if not name.startswith("--") or name in HELP_ALL or _known(name, known):
            continue
        guess = closest(name, known)
        if guess is None:
            raise UsageError(f"unknown option {name}", f"the options: {prog} --help (all of them: --help_all)")
        fixed = arg.replace(name, guess, 1)
        raise UsageError(f"unknown option {name}; did you mean {guess}?", "try: " + command(prog, argv, {arg: fixed}))
    return


def hw(text: str) -> tuple[int, int]:
    """An argparse ``type`` for (H, W): ``[512,1024]`` (also ``512,1024``)."""
    parts = [p for p in text.strip().strip("[]()").replace(",", " ").split()]
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [H,W], e.g. [512,1024]; got {text!r}") from None
    return h, w


def check_checkpoint_path(
    value: str, prog: str, argv: Sequence[str], flag: str = "--ckpt", suffix: str = ".ckpt"
) -> None:
    """Raises :class:`UsageError` when ``value`` (a ``--ckpt``) is missing or a folder: for a run folder it names
    the checkpoint inside (``checkpoints/best.ckpt``, else ``last.ckpt``) in the corrected command. Model zoo
    names and URLs (:data:`REMOTE_CHECKPOINTS`) pass untouched."""
    if value.startswith(REMOTE_CHECKPOINTS):
        return
    path = Path(value)
    if path.is_dir():
        for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                fixed = (path / name).as_posix()
                raise UsageError(
                    f"{flag} {value} is a folder; it holds {fixed}", "try: " + command(prog, argv, {value: fixed})
                )
        found = sorted(p.as_posix() for p in path.glob(f"*{suffix}"))
        if len(found) == 1:
            raise UsageError(f"{flag} {value} is a folder", "try: " + command(prog, argv, {value: found[0]}))
        example = "runs/<run>/checkpoints/best.ckpt" if suffix == ".ckpt" else f"model{suffix}"
        hint = f"{suffix} files there: {', '.join(found)}" if found else f"give a {suffix} file, e.g. {example}"
        raise UsageError(f"{flag} {value} is a folder, not a {suffix} file", hint)
    if not path.exists():
        here = sorted(p.as_posix() for p in path.parent.glob(f"*{suffix}")) if path.parent.is_dir() else []
        guess = closest(path.as_posix(), here)
        if guess is not None:
            raise UsageError(f"{flag} {value} does not exist", "try: " + command(prog, argv, {value: guess}))
        if suffix == ".ckpt":
            hint = "give a .ckpt file: train.py writes runs/<run>/checkpoints/best.ckpt and last.ckpt"
        else:
            hint = f"give a {suffix} file: python -m seg.export --ckpt CKPT --format onnx --out model.onnx writes one"
        raise UsageError(f"{flag} {value} does not exist", hint)


def help_screen(usage: str, description: str, rows: Sequence[tuple[str, str]], footer: str = "") -> str:
    """A short ``--help``: usage, description, then one entry per option (``rows``: flags, text), wrapped to
    100 columns with the texts aligned at column 32."""
    width, indent = 100, 32
    lines = [f"usage: {usage}", "", *textwrap.wrap(description, width), ""]
    for flags, text in rows:
        if not flags:  # a section heading (or, empty, a blank line)
            lines += ["", text] if text else [""]
            continue
        first = f"  {flags}"
        body = textwrap.wrap(text, width - indent) or [""]
        if len(first) >= indent - 1:
            lines.append(first)
        else:
            lines.append(first.ljust(indent) + body.pop(0))
        lines += [" " * indent + b for b in body]
    if footer:
        lines += ["", *textwrap.wrap(footer, width)]
    return "\n".join(lines) + "\n"


def option_value(argv: Sequence[str], flag: str) -> Optional[str]:
    """The last value ``argv`` gives ``flag`` (``--flag V`` or ``--flag=V``), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def positionals(argv: Sequence[str], pairs: Iterable[str] = ()) -> list[str]:
    """The positional arguments of ``argv`` for a command whose options all take one value (``--flag V`` or
    ``--flag=V``), the ``pairs`` options two bare numbers (the old spelling), ``-h`` / ``--help*`` none."""
    pairs = {p.replace("-", "_") for p in pairs}
    found: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return found + list(argv[i + 1 :])
        if not arg.startswith("-") or arg == "-":
            found.append(arg)
        elif "=" not in arg and arg not in ("-h", "--help", *HELP_ALL):
            two = arg.replace("-", "_")[2:] in {p[2:] for p in pairs} and all(_number(a) for a in argv[i + 1 : i + 3])
            i += 2 if two and len(argv) >= i + 3 else 1
        i += 1
    return found


def check_input_path(value: str, prog: str, argv: Sequence[str], example: str) -> None:
    """Raises :class:`UsageError` when the input ``value`` (a file or folder of images) does not exist, with the
    corrected command when a name beside it is close, else ``example``."""
    path = Path(value)
    if path.exists():
        return
    here = [p.as_posix() for p in path.parent.iterdir()] if path.parent.is_dir() else []
    guess = closest(path.as_posix(), here)
    hint = (
        "try: " + command(prog, argv, {value: guess}) if guess else f"give a folder of images or one image: {example}"
    )
    raise UsageError(f"input {value} does not exist", hint)


class _HelpAll(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        text = getattr(parser, "reference", "")
        sys.stdout.write((text.strip() + "\n\n" if text else "") + parser.format_help())
        parser.exit(0)


class ArgParser(argparse.ArgumentParser):
    """argparse with the convention: old spellings rewritten before parsing (:func:`normalize_argv`, for the
    ``pairs`` options too), ``--help_all`` (``reference``, e.g. the module docstring, then every option), and
    two-line errors naming the closest valid flag."""

    def __init__(self, *args, reference: str = "", pairs: Sequence[str] = (), **kwargs) -> None:  # noqa: ANN002
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.reference, self.pairs = reference, tuple(pairs)
        self.add_argument("--help_all", action=_HelpAll, help="the full reference: what the command does, in detail")

    def flags(self) -> set[str]:
        return {s for a in self._actions for s in a.option_strings}

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        argv = list(sys.argv[1:] if args is None else args)
        argv = normalize_argv(argv, self.flags() | {"--help-all"}, self.prog, self.pairs)
        argv = ["--help_all" if a == "--help-all" else a for a in argv]
        return super().parse_known_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        hint = f"the options: {self.prog} --help"
        if message.startswith("unrecognized arguments:"):
            unknown = message.partition(":")[2].split()
            guess = closest(unknown[0].partition("=")[0], self.flags()) if unknown else None
            if guess is not None:
                message += f" (did you mean {guess}?)"
        usage_exit(UsageError(message, hint))
