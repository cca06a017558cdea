"""The plugin through anomalib's own CLI and ours, the benchmark runner, and model naming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import anomalib_ext

BIN = Path(sys.executable).parent
LITE0_ARGS = ["--model.backbone", "efficientnet_lite0", "--model.layers", "[blocks.1, blocks.2, blocks.4]"]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # the package's own console scripts and interpreter, with argument lists and no shell
    result = subprocess.run(  # noqa: S603
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _data_args(texture_root: Path) -> list[str]:
    return [
        "--data",
        "anomalib_ext.data.MVTecStyle",
        "--data.root",
        str(texture_root / "brick"),
        "--data.image_size",
        "64",
        "--data.train_batch_size",
        "4",
        "--data.eval_batch_size",
        "4",
        "--trainer.max_epochs",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]


def test_no_model_name_collides_with_an_anomalib_builtin() -> None:
    """Anomalib's get_model matches names case-insensitively and the last match wins."""
    import anomalib.models

    builtin = {name.lower() for name in anomalib.models.__all__}
    ours = set(anomalib_ext.__all__)
    assert ours, "nothing exported"
    assert not {name for name in ours if name.lower() in builtin}


@pytest.mark.slow
def test_anomalib_cli_trains_by_dotted_path(texture_root: Path, tmp_path: Path) -> None:
    """Anomalib's own ``anomalib fit`` trains the model given as ``anomalib_ext.RD4AD`` and writes a checkpoint."""
    _run(
        [
            str(BIN / "anomalib"),
            "fit",
            "--model",
            "anomalib_ext.RD4AD",
            *LITE0_ARGS,
            *_data_args(texture_root),
            "--default_root_dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_our_cli_resolves_short_names_and_tests(texture_root: Path, tmp_path: Path) -> None:
    """``anomalib-ext train --model RD4AD`` finds the model by its short name, fits it and prints test metrics."""
    result = _run(
        [
            str(BIN / "anomalib-ext"),
            "train",
            "--model",
            "RD4AD",
            *LITE0_ARGS,
            *_data_args(texture_root),
            "--default_root_dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert "image_AUROC" in result.stdout + result.stderr


def test_cli_help_lists_our_tools(tmp_path: Path) -> None:
    """The console script hands ``benchmark --help`` to our tool, and the documented tools are registered."""
    result = _run([str(BIN / "anomalib-ext"), "benchmark", "--help"], tmp_path)
    assert "--model" in result.stdout
    from anomalib_ext.cli import TOOLS

    assert {"demo", "benchmark", "distill-teacher"} <= set(TOOLS)


@pytest.mark.slow
def test_benchmark_appends_measured_rows_and_plots(texture_root: Path, tmp_path: Path) -> None:
    """One command: ours and an anomalib built-in on the same data, a row each, and both figures."""
    from anomalib_ext.benchmark import main

    table = tmp_path / "bench.md"
    table.write_text("# Benchmarks\n\n## Other\n\n| a |\n|---|\n| 1 |\n")
    args = [
        "--models",
        "RD4AD",
        "Padim",
        "--model-args",
        '{"Padim": {"n_features": 50}}',
        "--plots",
        str(tmp_path / "plots"),
        "--data",
        str(texture_root / "grass"),
        "--backbone",
        "efficientnet_lite0",
        "--layers",
        "blocks.1",
        "blocks.2",
        "blocks.4",
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--work-dir",
        str(tmp_path / "work"),
        "--output",
        str(table),
        "--section",
        "RD4AD",
    ]
    assert main(args) == 0
    text = table.read_text()
    assert "## Other\n\n| a |\n|---|\n| 1 |\n" in text  # other sections untouched
    row = next(line for line in text.splitlines() if line.startswith("| RD4AD |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:5] == ["grass", "tf_efficientnet_lite0", "64", "1"]  # the network the Lite0 weights are for
    # One epoch leaves RD4AD near chance, where its exact values depend on the CPU's float32 kernels
    # (an AMD EPYC and an Intel Xeon differ in the first decimal), so the row is checked against the
    # run's own benchmark.json: image AUROC, pixel AUROC and AUPRO in percent with one decimal.
    # Padim needs no training and ranks well above chance.
    saved = json.loads((tmp_path / "work" / "RD4AD" / "benchmark.json").read_text())["metrics"]
    expected = [f"{100 * saved[key]:.1f}" for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")]
    assert cells[5:8] == expected
    assert cells[9].endswith("ms (CPU)")
    assert cells[10].endswith("ms (f32)")
    padim = next(line for line in text.splitlines() if line.startswith("| Padim | grass |"))
    assert float(padim.strip("|").split("|")[5]) >= 70.0
    assert (tmp_path / "work" / "RD4AD" / "benchmark.json").is_file()
    assert (tmp_path / "work" / "Padim" / "benchmark.json").is_file()
    from PIL import Image

    for name in ("heatmaps.png", "accuracy_vs_latency.png"):
        with Image.open(tmp_path / "plots" / name) as image:
            assert image.width > 300
            assert image.height > 200


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path: Path) -> None:
    """The README's main job, shortened: build data, train, test, export, compare, write heatmaps."""
    result = _run(
        [str(BIN / "anomalib-ext"), "demo", "--epochs", "1", "--image-size", "64", "--output", str(tmp_path / "out")],
        tmp_path,
    )
    assert "image_AUROC" in result.stdout
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"max_map_difference"' in summary
    import json

    data = json.loads(summary)
    assert data["max_map_difference"] < 1e-3
    assert len(list((tmp_path / "out" / "heatmaps").glob("*.png"))) >= 4


def _quiet_cli_args(texture_root: Path, root: Path) -> list[str]:
    return [
        "--model",
        "RD4AD",
        *LITE0_ARGS,
        "--model.visualizer",
        "false",
        *_data_args(texture_root),
        "--data.num_workers",
        "0",
        "--trainer.logger",
        "false",
        "--default_root_dir",
        str(root),
    ]


def test_cli_trainer_gets_the_device_safe_checkpoint_io(texture_root: Path, tmp_path: Path) -> None:
    """Unless one is configured, the CLI's engine gets ``DeviceSafeCheckpointIO`` (GPU checkpoints load on CPUs)."""
    from anomalib_ext.cli import anomalib_cli_class
    from anomalib_ext.plugins import DeviceSafeCheckpointIO

    cli = anomalib_cli_class()(["test", *_quiet_cli_args(texture_root, tmp_path)], run=False)
    plugins = cli.engine._cache.args["plugins"]  # noqa: SLF001  # the engine keeps trainer arguments only there
    assert [type(plugin) for plugin in plugins] == [DeviceSafeCheckpointIO]


def test_cli_keeps_a_checkpoint_io_the_user_chose(texture_root: Path, tmp_path: Path) -> None:
    """A checkpoint IO given with ``--trainer.plugins`` is kept, not replaced."""
    from lightning.fabric.plugins import TorchCheckpointIO

    from anomalib_ext.cli import anomalib_cli_class

    args = [
        "test",
        *_quiet_cli_args(texture_root, tmp_path),
        "--trainer.plugins",
        "lightning.pytorch.plugins.TorchCheckpointIO",
    ]
    cli = anomalib_cli_class()(args, run=False)
    assert type(cli.engine._cache.args["plugins"]) is TorchCheckpointIO  # noqa: SLF001  # as above


def test_device_safe_checkpoint_io_is_added_only_without_one() -> None:
    """The IO joins other plugins, and is left out when the plugins or the strategy already hold one."""
    from lightning.fabric.plugins import TorchCheckpointIO
    from lightning.pytorch.plugins.precision import DoublePrecision
    from lightning.pytorch.strategies import DDPStrategy

    from anomalib_ext.plugins import DeviceSafeCheckpointIO, with_device_safe_checkpoint_io

    assert [type(p) for p in with_device_safe_checkpoint_io(None)] == [DeviceSafeCheckpointIO]
    precision = DoublePrecision()
    assert [type(p) for p in with_device_safe_checkpoint_io(precision, "ddp")] == [
        DoublePrecision,
        DeviceSafeCheckpointIO,
    ]
    own = [precision, TorchCheckpointIO()]
    assert with_device_safe_checkpoint_io(own) is own
    strategy = DDPStrategy(checkpoint_io=TorchCheckpointIO())  # Lightning refuses a checkpoint IO in both places
    assert with_device_safe_checkpoint_io(None, strategy) is None


@pytest.mark.slow
def test_cli_tests_a_gpu_checkpoint_on_a_cpu_machine(
    texture_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``anomalib-ext test --ckpt_path`` of a checkpoint written on a GPU just works on the CPU."""
    import torch

    from anomalib_ext.cli import main
    from tests.test_deploy import save_as_if_on_gpu

    assert main(["fit", *_quiet_cli_args(texture_root, tmp_path / "fit")]) == 0
    (checkpoint,) = (tmp_path / "fit").rglob("*.ckpt")
    gpu_checkpoint = tmp_path / "trained_on_gpu.ckpt"
    save_as_if_on_gpu(torch.load(checkpoint, map_location="cpu", weights_only=False), gpu_checkpoint)
    test_args = ["test", *_quiet_cli_args(texture_root, tmp_path / "test"), "--ckpt_path", str(gpu_checkpoint)]
    capsys.readouterr()
    assert main(test_args) == 0
    assert "image_AUROC" in capsys.readouterr().out
    if not torch.cuda.is_available():  # control: anomalib's own checkpoint IO, chosen by the user, is kept and fails
        with pytest.raises(RuntimeError, match="CUDA"):
            main([*test_args, "--trainer.plugins", "anomalib.engine.plugins.AnomalibCheckpointIO"])


def test_cli_hides_third_party_future_warnings_only_while_it_runs() -> None:
    """Anomalib's and timm's FutureWarnings are hidden inside the command; others, and the caller's filters, are not."""
    import warnings

    from anomalib_ext.cli import third_party_future_warnings_hidden

    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with third_party_future_warnings_hidden():
            for module in ("anomalib.models.image.dinomaly.components.layers", "timm.models.layers", "mine"):
                warnings.warn_explicit("deprecated", FutureWarning, f"{module}.py", 1, module=module)
    assert [str(w.filename) for w in caught] == ["mine.py"]
    assert warnings.filters == before


def test_cli_entry_point_prints_no_future_warning(tmp_path: Path) -> None:
    """``main`` (anomalib's CLI and a tool) imports anomalib under its filter: stderr stays clean.

    Runs ``cli.py`` as a script, the way ``main`` sees it once the package no longer imports anomalib
    itself (see the console-script test below).
    """
    import anomalib_ext.cli

    # runpy: the package directory does not land on sys.path, as it would with ``python cli.py``
    script = (
        "import runpy, sys; sys.argv[1:] = sys.argv[2:]; "
        f"runpy.run_path({anomalib_ext.cli.__file__!r}, run_name='__main__')"
    )
    for command in (["--help"], ["benchmark", "--help"]):
        result = _run([sys.executable, "-c", script, "-", *command], tmp_path)
        assert "--help" in result.stdout
        assert "FutureWarning" not in result.stderr, result.stderr


def test_console_script_help_prints_no_future_warning(tmp_path: Path) -> None:
    """``anomalib-ext --help`` through the installed console script prints no third-party FutureWarning."""
    result = _run([str(BIN / "anomalib-ext"), "--help"], tmp_path)
    assert "FutureWarning" not in result.stderr, result.stderr
