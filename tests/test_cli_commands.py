"""Every command in one convention (seg.command_line): a --help that fits a screen (--help_all for the rest),
underscore flags (dash spellings accepted with a note), [H,W] list values, two-line errors checked before anything
is loaded, and train.py's answers to misspelt keys, ``fit`` and a head switched from the command line."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest
from helpers import ROOT, run_cmd_without_torch

from seg import evaluate as evaluate_cmd
from seg import export as export_cmd
from seg import predict as predict_cmd
from seg.command_line import ArgParser, UsageError, check_checkpoint_path, normalize_argv
from seg.compare import cli as compare_cli
from seg.convert import build_parser as convert_parser
from seg.deploy import onnx_predict
from seg.training import train_args
from seg.training.cli import main as train_main
from seg.training.tool_cli import tool_parser

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FLAG = re.compile(r"--[a-z0-9_]+(\.[a-z0-9_]+)*\+?")  # underscores, dotted sections, jsonargparse's list '+'


def _run(main, args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


HELPS = {
    "seg.evaluate": (evaluate_cmd.main, ["--help"]),
    "seg.predict": (predict_cmd.main, ["--help"]),
    "seg.predict --onnx": (predict_cmd.main, ["--onnx", "m.onnx", "--help"]),
    "seg.export": (export_cmd.main, ["--help"]),
    "seg.convert": (lambda a: convert_parser().parse_args(a), ["--help"]),
    "seg.convert mmseg": (lambda a: convert_parser().parse_args(a), ["mmseg", "--help"]),
    "seg.compare": (compare_cli.main, ["--help"]),
    "train.py": (train_main, ["--help"]),
}


@pytest.mark.parametrize("name", sorted(HELPS))
def test_help_fits_a_screen_and_help_all_has_the_rest(name, capsys):
    main, args = HELPS[name]
    code, out, _ = _run(main, args, capsys)
    assert code == 0 and out.startswith("usage:")
    assert len(out.splitlines()) <= 60, (name, len(out.splitlines()))
    assert "--help_all" in out
    code, full, _ = _run(main, [a if a != "--help" else "--help_all" for a in args], capsys)
    assert code == 0 and len(full.splitlines()) > len(out.splitlines())
    extra = {
        "seg.evaluate": "--data.cache_dir",
        "seg.predict": "--max_pixels",
        "train.py": "--trainer.gradient_clip_val",
    }
    if name in extra:
        assert extra[name] not in out and extra[name] in full


def test_help_screens_name_real_options(capsys):
    """What the short screens list exists: the tools' rows are looked up in their parser (a KeyError otherwise,
    so --help itself would fail), train.py's hand-written rows against its --help_all."""
    _, full, _ = _run(train_main, ["--help_all"], capsys)
    known = {m.group(0) for m in FLAG.finditer(full)}
    assert set(train_args.help_flags()) - {"-c", "-h", "--help", "--help_all"} <= known
    assert {"--model.head", "--data.crop_size", "--trainer.max_steps", "--ckpt_path"} <= set(train_args.help_flags())


def _option_strings(parser) -> set[str]:
    found = set()
    for action in parser._actions:
        found |= {s for s in action.option_strings if s.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def test_every_command_spells_flags_with_underscores(capsys):
    parsers = {
        "export": export_cmd.build_parser(),
        "convert": convert_parser(),
        "compare": compare_cli.build_parser(),
        "predict --onnx": onnx_predict.build_parser(),
        "evaluate": tool_parser("e", "", "", evaluate_cmd._own_arguments),
        "predict": tool_parser("p", "", "", predict_cmd._own_arguments, trainer=False),
    }
    flags = {name: _option_strings(p) for name, p in parsers.items()}
    _, full, _ = _run(train_main, ["--help_all"], capsys)
    flags["train.py"] = {m.group(0) for m in re.finditer(r"--[\w.+-]+", full)}
    for name, found in flags.items():
        bad = sorted(f for f in found if not FLAG.fullmatch(f) and f not in ("--help", "--help-all"))
        assert not bad, (name, bad)
    assert {"--crop_size", "--with_normalize", "--no_verify"} <= flags["export"]
    assert {"--num_classes", "--output_stride", "--no_aux"} <= flags["convert"]
    assert "--max_pixels" in flags["predict"] and "--max_pixels" in flags["predict --onnx"]
    assert "--ckpt" in flags["evaluate"] and "--ckpt_path" in flags["train.py"]


def test_old_spellings_still_parse_with_a_note(capsys):
    args = export_cmd.build_parser().parse_args(
        ["--ckpt", "k", "--format", "onnx", "--out", "o", "--crop-size", "64", "96", "--with-normalize"]
    )
    assert args.crop_size == (64, 96) and args.with_normalize
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 3 and "--crop-size is spelt --crop_size" in notes[0] and "--crop_size=[64,96]" in notes[1]
    assert export_cmd.build_parser().parse_args(
        ["--ckpt", "k", "--format", "onnx", "--out", "o", "--size=[8,16]"]
    ).size == (8, 16)
    assert capsys.readouterr().err == ""  # the convention's spelling: no note
    mm = convert_parser().parse_args(
        ["mmseg", "a.pth", "b.ckpt", "--head", "fcn", "--backbone", "r", "--num-classes", "3", "--no-aux"]
    )
    assert mm.num_classes == 3 and mm.aux is False
    # train.py and the jsonargparse tools: the same rewrite, for keys under a section too
    assert normalize_argv(["--data.batch-size", "2", "--"], {"--data", "--data.batch_size"}, "p") == [
        "--data.batch_size",
        "2",
        "--",
    ]
    assert "--data.batch-size is spelt --data.batch_size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# train.py


def test_train_misspelt_key_names_the_closest_one(capsys):
    code, _, err = _run(train_main, ["--config", QUICKSTART, "--model.hed=danet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err
    assert "--model.hed" in lines[0] and "did you mean --model.head?" in lines[0]
    assert lines[1] == f"try: python train.py --config {QUICKSTART} --model.head=danet"
    code, _, err = _run(train_main, ["--config", QUICKSTART, "--ckpt", "runs/x/last.ckpt"], capsys)
    assert code == 2 and "--ckpt_path" in err and "--model.init_from" in err


def test_train_accepts_fit_and_names_the_command_for_the_others(capsys):
    code, out, err = _run(train_main, ["fit", "--config", QUICKSTART, "--print_config"], capsys)
    assert code == 0 and "head: fcn" in out and "`fit` is what train.py does" in err
    code, _, err = _run(train_main, ["validate", "--config", QUICKSTART], capsys)
    assert code == 2 and "python -m seg.evaluate --ckpt" in err


def test_head_switch_error_gives_a_command_that_works(capsys):
    """quickstart's FCN head_kwargs do not fit smp:Unet: the strict check stays, and the command it prints (reset
    head_kwargs, the output stride Unet needs) parses: run it with --print_config."""
    code, _, err = _run(train_main, ["--config", QUICKSTART, "--model.head=smp:Unet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2 and "has no argument 'channels'" in lines[0], err
    assert "--model.head_kwargs='{}'" in lines[1] and "--model.output_stride=32" in lines[1]
    fixed = shlex.split(lines[1].split(": ", 1)[1])
    assert fixed[:2] == ["python", "train.py"]
    code, out, _ = _run(train_main, [*fixed[2:], "--print_config"], capsys)
    assert code == 0 and "head: smp:Unet" in out and "output_stride: 32" in out


# ------------------------------------------------------------------------------------------------
# two-line errors before anything is loaded


def _two_lines(proc) -> list[str]:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 2, proc.stderr
    return lines


def test_predict_missing_input_fails_before_loading_the_model(tmp_path):
    """The checkpoint / ONNX file here is garbage and torch cannot be imported: the input was checked before
    either was loaded; both paths, as a user runs them (subprocess: exit status, no traceback)."""
    (tmp_path / "model.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    for model in (["--ckpt", str(tmp_path / "model.ckpt")], ["--onnx", str(tmp_path / "model.onnx")]):
        proc = run_cmd_without_torch([*model, str(tmp_path / "missing/path"), "--out", str(tmp_path / "o")])
        lines = _two_lines(proc)
        assert lines[0] == f"error: input {tmp_path / 'missing/path'} does not exist"
        assert lines[1].startswith("give a folder of images or one image: python -m seg.predict")
    (tmp_path / "imgs").mkdir()
    proc = run_cmd_without_torch(["--onnx", str(tmp_path / "nope.onnx"), str(tmp_path / "imgs"), "--out", "o"])
    assert "nope.onnx does not exist" in _two_lines(proc)[0]
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "imgs/a.png"), np.zeros((4, 4, 3), np.uint8))
    proc = run_cmd_without_torch(["--onnx", str(tmp_path / "model.onnx"), str(tmp_path / "imgs"), "--out", "o"])
    assert "is not a model ONNX Runtime can load" in _two_lines(proc)[0]


def test_ckpt_folder_names_the_checkpoint_inside(tmp_path, capsys):
    run = tmp_path / "runs/x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints/last.ckpt").write_bytes(b"")
    code, _, err = _run(evaluate_cmd.main, ["--ckpt", str(run)], capsys)
    assert code == 2 and err.splitlines() == [
        f"error: --ckpt {run} is a folder; it holds {run}/checkpoints/last.ckpt",
        f"try: python -m seg.evaluate --ckpt {run}/checkpoints/last.ckpt",
    ]
    (run / "checkpoints/best.ckpt").write_bytes(b"")
    code, _, err = _run(export_cmd.main, ["--ckpt", str(run), "--format", "onnx", "--out", "m.onnx"], capsys)
    assert code == 2 and f"--ckpt {run}/checkpoints/best.ckpt" in err.splitlines()[1]
    code, _, err = _run(
        predict_cmd.main, ["--ckpt", str(run / "checkpoints/bset.ckpt"), str(tmp_path), "--out", "o"], capsys
    )
    assert code == 2 and "bset.ckpt does not exist" in err and f"{run}/checkpoints/best.ckpt" in err.splitlines()[1]
    for name in ("mmseg:fcn_r50-d8_512x1024_80k_cityscapes", "https://example.org/m.ckpt", "http://127.0.0.1/m.ckpt"):
        check_checkpoint_path(name, "p", [])  # resolved by seg.loading: not a local path


def test_tool_errors_name_the_real_command(capsys):
    """jsonargparse's tip named `evaluate.py --help`, which is no command."""
    ckpt = str(ROOT / "tests/data/legacy/train_last.ckpt")
    code, _, err = _run(evaluate_cmd.main, ["--ckpt", ckpt, "--mode", "fancy"], capsys)
    assert code == 2 and "evaluate.py" not in err and "python -m seg.evaluate --help" in err
    code, _, err = _run(evaluate_cmd.main, ["--ckpt", ckpt, "--outptu", "m.json"], capsys)
    assert code == 2 and err.splitlines()[0] == "error: unknown option --outptu; did you mean --output?"
    with pytest.raises(SystemExit):
        ArgParser(prog="p").parse_args(["--bogus"])
    assert capsys.readouterr().err.splitlines()[1] == "the options: p --help"
    with pytest.raises(UsageError, match="unknown option"):
        from seg.command_line import check_flags

        check_flags(["--zzz"], {"--a"}, "p")
