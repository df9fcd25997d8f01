"""What the commands print and accept: typed head arguments (checked at parse time, shown by --print_config),
the tools' own options first in --help, plain progress lines in a log file, no Lightning noise."""

from __future__ import annotations

import inspect
import io
import re
import warnings
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_cmd, tiny_config

from seg.models import HEADS, head_signature
from seg.training.cli import main, take_print_config
from seg.training.console import progress_bar
from seg.training.head_args import HeadArgumentError, typed_head_kwargs
from seg.training.progress import TextProgressBar


def _exit_message(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code not in (0, None)
    return capsys.readouterr().err


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_kwargs_defaults_are_the_signature(head):
    """Every config-settable argument of every head, at the default its class declares (an independent reading of
    the signature: inspect, not jsonargparse)."""
    builder, supplied = head_signature(head)
    typed = typed_head_kwargs(head, {})
    params = {n: p for n, p in inspect.signature(builder).parameters.items() if n not in supplied}
    assert set(typed) <= set(params)
    for name, value in typed.items():
        default = params[name].default
        assert value == (list(default) if isinstance(default, tuple) else default), (head, name)
    missing = set(params) - set(typed)
    assert all(n in ("norm_layer", "act_layer") for n in missing), missing  # class-valued: set from Python


def test_misspelt_head_argument_fails_at_parse_time_naming_the_valid_ones(capsys, tmp_path):
    cfg = ROOT / "configs" / "ccnet.yaml"
    err = _exit_message(capsys, ["--config", str(cfg), "--model.head_kwargs.recurence=2"])
    assert "recurence" in err and "recurrence" in err and "channels" in err and "CCHead" in err
    err = _exit_message(capsys, ["--config", str(cfg), "--model.head_kwargs.recurrence=two"])
    assert "recurrence" in err and "int" in err
    err = _exit_message(capsys, ["--config", str(cfg), "--model.head=ccnett"])
    assert "ccnett" in err and "danet" in err  # lists the valid heads
    with pytest.raises(HeadArgumentError, match="norm_layer"):
        typed_head_kwargs("danet", {"norm_layer": "torch.nn.SyncBatchNorm"})


def test_print_config_shows_typed_head_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(
            ["--config", str(ROOT / "configs" / "danet.yaml"), "--model.head_kwargs.pam_channels=32", "--print_config"]
        )
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["head"] == "danet"
    assert cfg["model"]["head_kwargs"] == {**typed_head_kwargs("danet", {}), "pam_channels": 32}
    assert cfg["model"]["head_kwargs"]["dropout"] == inspect.signature(HEADS["danet"]).parameters["dropout"].default


def test_take_print_config_flags():
    assert take_print_config(["--a=1"]) == (["--a=1"], None)
    assert take_print_config(["--print_config", "--a=1"]) == (["--a=1"], {"skip_unset": False})
    assert take_print_config(["--print_config=skip_default,skip_null"])[1] == {"skip_default": True, "skip_unset": True}


def test_short_head_names_train_with_typed_kwargs(tiny_data, tmp_path):
    """A short name with partial head_kwargs trains, and the run's config.yaml records every head argument."""
    config = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=2, val_check_interval=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "args parameter is intended ..." warning
        main(["--config", str(config), "--model.head=ccnet", "--model.head_kwargs={channels: 8, recurrence: 1}"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["model"]["head_kwargs"] == typed_head_kwargs("ccnet", {"channels": 8, "recurrence": 1})


def test_log_file_gets_plain_progress_lines(tiny_data, tmp_path):
    """Not a terminal: one line per log_every_n_steps steps (loss, lr, the last mIoU in %, the run's ETA; no epoch in
    an iteration-based run) and per validation, the model summary in one line, no FLOPs column, no litlogger tip,
    no Rich box drawing, none of Lightning's start-up notices (seed, accelerators), and the closing block last."""
    config = tiny_config(
        tmp_path / "cfg.yaml",
        tiny_data,
        tmp_path / "run",
        max_steps=4,
        val_check_interval=2,
        log_every_n_steps=2,
        enable_progress_bar=True,
        enable_model_summary=True,
    )
    proc = run_cmd(["train.py", "--config", str(config)])
    text = proc.stdout + proc.stderr
    steps = re.findall(
        r"^step (\d+)/4 \| loss [0-9.]+ \| lr [0-9.e-]+ \| .*it/s \| eta \d:\d\d:\d\d$", text, flags=re.M
    )
    assert steps == ["2", "4"], text
    assert re.search(r"^step 4/4 \| .*\| mIoU [0-9.]+% \|", text, flags=re.M), text  # step 2's validation
    assert re.findall(r"^validation at step (\d+): mIoU [0-9.]+%$", text, flags=re.M) == ["2", "4"]
    assert re.search(r"^model: [0-9.]+ [KM] parameters.*backbone .*head .*aux_head", text, flags=re.M), text
    noise = ("FLOPs", "litlogger", "━", "┃", "LeafSpec", "args parameter is intended", "v_num", "epoch")
    for word in (*noise, "Seed set to", "GPU available", "TPU available", "Trainer.fit` stopped"):
        assert word not in text, word
    assert proc.stdout.rstrip().splitlines()[-1].startswith("  python -m seg.export --ckpt")


def test_progress_bar_choice():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_bar(io.StringIO()), TextProgressBar)
    assert not isinstance(progress_bar(Tty()), TextProgressBar)


def test_rerun_into_a_used_run_dir_says_what_happens(tiny_data, tmp_path):
    """Lightning's "exists and is not empty" becomes a warning that says what to do, and is silent on a resume."""
    config = tiny_config(tmp_path / "cfg.yaml", tiny_data, tmp_path / "run", max_steps=3, val_check_interval=3)
    main(["--config", str(config)])
    with pytest.warns(UserWarning, match=r"holds best.ckpt, last.ckpt of an earlier run.*--ckpt_path last"):
        main(["--config", str(config)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["--config", str(config), "--trainer.max_steps=4", "--ckpt_path", "last"])
    assert not [w for w in caught if "earlier run" in str(w.message) or "not empty" in str(w.message)]


def test_smp_heads_are_typed_and_checked_at_parse_time(capsys):
    """smp architectures: their own named arguments (not what **kwargs forwards to the encoder), and output stride /
    backbone needs refused before anything is built."""
    import segmentation_models_pytorch as smp

    typed = typed_head_kwargs("smp:DeepLabV3Plus", {"decoder_atrous_rates": [6, 12, 18]})
    params = inspect.signature(smp.DeepLabV3Plus).parameters
    assert typed["decoder_atrous_rates"] == [6, 12, 18]
    assert typed["decoder_channels"] == params["decoder_channels"].default
    assert set(typed) <= set(params) and "encoder_name" not in typed and "output_stride" not in typed
    quick = ["--config", str(ROOT / "configs" / "quickstart.yaml"), "--model.head=smp:Unet"]
    assert "head_kwargs='{}'" in _exit_message(capsys, quick)  # quickstart's FCN head_kwargs: says how to reset
    err = _exit_message(capsys, [*quick, "--model.head_kwargs={}"])
    assert "output_stride=8" in err and "32" in err
    err = _exit_message(
        capsys, [*quick[:-1], "--model.head=smp:DPT", "--model.head_kwargs={}", "--model.output_stride=32"]
    )
    assert "Vision Transformer" in err


# ------------------------------------------------------------------------------------------------
# predictions people look at: palette PNG masks and a legend (seg.deploy.outputs, both predict paths)


def test_index_masks_are_palette_pngs_read_as_indices(tmp_path):
    import cv2
    import numpy as np
    from PIL import Image

    from seg.data.base import read_mask
    from seg.deploy.outputs import write_prediction

    palette = [(10, 20, 30), (200, 0, 0), (0, 200, 0), (255, 255, 255)]
    label = np.random.default_rng(0).integers(0, 4, (23, 31)).astype(np.uint8)
    rgb = np.zeros((23, 31, 3), np.uint8)
    path = write_prediction(tmp_path, "x", rgb, label, palette)
    with Image.open(path) as im:
        assert im.mode == "P" and im.getpalette()[: 3 * len(palette)] == [c for rgb in palette for c in rgb]
        np.testing.assert_array_equal(np.asarray(im), label)  # PIL: the indices
    np.testing.assert_array_equal(read_mask(path), label)  # seg's own reader (training, seg.data.check)
    # OpenCV expands every palette PNG to colours (it has no flag that keeps indices): the class colours
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1], np.asarray(palette)[label])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "x_color.png"))[..., ::-1], np.asarray(palette)[label])


def test_predict_writes_a_legend_of_the_classes(tmp_path):
    import cv2
    import numpy as np
    from PIL import Image

    from seg.deploy.outputs import predict_images, write_legend

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in/a.png"), np.zeros((8, 9, 3), np.uint8))
    palette = [(255, 0, 0), (0, 0, 255), (0, 128, 0)]
    predict_images(
        [tmp_path / "in/a.png"],
        tmp_path / "out",
        lambda x: np.zeros(x.shape[:2], np.uint8),
        palette,
        classes=["road", "sky", "tree"],
    )
    legend = np.asarray(Image.open(tmp_path / "out/legend.png").convert("RGB"))
    for i, colour in enumerate(palette):  # row i's swatch (6 px margin, 18 px rows, 28 px swatch) in class i's colour
        assert tuple(legend[6 + 18 * i + 9, 6 + 14]) == colour, i
    assert (legend[:, 40:] < 128).any()  # the names are drawn right of the swatches
    from seg.deploy.outputs import output_stems

    stems = output_stems([Path("in/legend.jpg"), Path("in/a.png")])  # its mask would overwrite the legend
    assert stems == {Path("in/legend.jpg"): "legend.jpg", Path("in/a.png"): "a"}
    many = Image.open(write_legend(tmp_path / "l.png", None, [(0, 0, 0)] * 150))
    assert many.width > 4 * legend.shape[1] // 2 and many.height < 40 * 18  # 150 classes: several columns


# ------------------------------------------------------------------------------------------------
# --bf16 on a CPU without native bf16


def test_cpu_bf16_detection_from_flags():
    from seg.training.tool_cli import cpu_native_bf16

    epyc = {"sse2", "avx2", "fma"}  # a 2-core AMD EPYC without AVX-512: bf16 emulated, measured 8.5x slower
    assert cpu_native_bf16(epyc, "AVX2")[0] is False
    assert cpu_native_bf16(epyc | {"avx512f", "avx512_bf16"}, "AVX512")[0] is True
    assert cpu_native_bf16(epyc | {"avx512f", "amx_bf16"}, "AVX512")[0] is True
    assert cpu_native_bf16(epyc | {"avx512f"}, "AVX512")[0] is False  # Skylake-SP: AVX-512 without BF16
    assert cpu_native_bf16(epyc | {"avx512_bf16"}, "AVX2")[0] is False  # ATEN_CPU_CAPABILITY=avx2: no such kernels
    assert cpu_native_bf16({"fp", "asimd", "bf16"}, "SVE256")[0] is True  # Arm (Graviton3)
    assert cpu_native_bf16({"fp", "asimd"}, "DEFAULT")[0] is False


def test_cpuinfo_flags_are_read(tmp_path):
    from seg.training.tool_cli import _cpuinfo_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert _cpuinfo_flags(str(info)) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert _cpuinfo_flags(str(tmp_path / "none")) is None


def test_bf16_falls_back_to_fp32_with_one_line(monkeypatch, capsys):
    from seg.training import tool_cli

    monkeypatch.delenv("SEG_FORCE_BF16", raising=False)
    monkeypatch.setattr(tool_cli, "cpu_native_bf16", lambda: (False, "neither avx512_bf16 nor amx_bf16; x"))
    assert tool_cli.use_bf16("cpu", True) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no native bf16" in err[0] and "running fp32" in err[0] and "SEG_FORCE_BF16=1" in err[0]
    assert tool_cli.use_bf16("cpu", False) is False and tool_cli.use_bf16("cuda", True) is True
    monkeypatch.setenv("SEG_FORCE_BF16", "1")
    assert tool_cli.use_bf16("cpu", True) is True
    monkeypatch.setattr(tool_cli, "cpu_native_bf16", lambda: (True, "avx512_bf16"))
    monkeypatch.delenv("SEG_FORCE_BF16")
    assert tool_cli.use_bf16("cpu", True) is True and capsys.readouterr().err == ""
