"""The command line: help output, exit status 2 for bad overrides, no traceback."""

from __future__ import annotations

import subprocess
import sys

from omegaconf import OmegaConf

from tinyexp_core.cli import main


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tinyexp_core.examples.mnist_exp", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_mode_help_prints_config_and_overrides():
    proc = _run("mode=help", "optimizer_cfg.lr=0.02", "train_cfg.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    config_part, changes = proc.stdout.split("# overridden keys")
    cfg = OmegaConf.create(config_part)
    assert cfg.optimizer_cfg.lr == 0.02 and cfg.train_cfg.num_epochs == 1
    assert "optimizer_cfg.lr: 0.02  (was 0.001)" in changes
    assert "train_cfg.num_epochs: 1  (was 5)" in changes
    assert "exp_class: tinyexp_core.examples.mnist_exp:Exp" in config_part


def test_unknown_key_exits_2_with_one_line_and_suggestion(tmp_path):
    proc = _run("optimizer_cfg.lrr=0.1", f"output_root={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: unknown config key 'optimizer_cfg.lrr'; did you mean 'optimizer_cfg.lr'?"
    ]
    assert "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written before validation passes"


def test_wrong_type_exits_2(capsys):
    assert main(["train_cfg.num_epochs=many"], "tinyexp_core.examples.mnist_exp:Exp") == 2
    err = capsys.readouterr().err
    assert "train_cfg.num_epochs" in err and "expected int" in err


def test_cli_trains_in_process(tmp_path, digits_prepared, capsys):
    status = main(
        [
            f"output_root={tmp_path}",
            f"data_cfg.prepared_path={digits_prepared}",
            "train_cfg.num_epochs=1",
            "run_id=cli-test",
        ],
        "tinyexp_core.examples.mnist_exp:Exp",
    )
    assert status == 0
    assert (tmp_path / "cli-test" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "cli-test" / "config.yaml").is_file()
