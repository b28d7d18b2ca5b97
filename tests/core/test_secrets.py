"""A credential inside a URL-valued config field is hidden wherever the config is shown or
stored (help, logs, config.yaml, checkpoints, errors), while the run uses the real value."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyexp_core.cli import main
from tinyexp_core.config.exceptions import ConfigTypeError, ConfigValueError, OverrideSyntaxError
from tinyexp_core.config.factory import build_exp, format_help
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.examples.resnet_exp import Exp as ResNetExp
from tinyexp_core.redaction import has_credential, redact_overrides, redact_text, redact_value

SECRET = "Pa55w0rdXyz"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://alice:hunter2@host:6380/1", "rediss://alice:***@host:6380/1"),
        ("redis://alice:p%40ss@host/0", "redis://alice:***@host/0"),
        ("redis://:p@ss/w@host/0", "redis://:***@host/0"),  # unencoded @ and / in it
        ("https://ghp_token123@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("redis://host:6379/0?password=hunter2&db=1", "redis://host:6379/0?password=***&db=1"),
        ("unix:///tmp/r.sock?db=0&password=hunter2", "unix:///tmp/r.sock?db=0&password=***"),
        ("s3://b/k?X-Amz-Signature=abc&x=1", "s3://b/k?X-Amz-Signature=***&x=1"),
        # An object-store endpoint or root with its keys inline (storage errors quote both).
        ("https://minio:s3cr3t@minio.local:9000", "https://minio:***@minio.local:9000"),
        ("s3://AKIAEXAMPLE:wJalr/K7MDENG@bucket/p", "s3://AKIAEXAMPLE:***@bucket/p"),
        ("[redis://:a@h1/0, redis://:b@h2/0]", "[redis://:***@h1/0, redis://:***@h2/0]"),
        ("url: redis://:hunter2@[::1", "url: redis://:***@[::1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("alice@example.org and a=b", "alice@example.org and a=b"),
    ],
)
def test_redact_text(text: str, shown: str) -> None:
    assert redact_text(text) == shown
    assert has_credential(text) == (text != shown)


def test_redact_value_and_overrides() -> None:
    config = {"a": {"url": "redis://:pw1@h/0", "n": 3, "l": ["ray://u:pw2@h:1", 1.5]}}
    shown = {"a": {"url": "redis://:***@h/0", "n": 3, "l": ["ray://u:***@h:1", 1.5]}}
    assert redact_value(config) == shown
    assert config["a"]["url"] == "redis://:pw1@h/0", "the input is not modified"
    assert redact_overrides(["progress_cfg.url=redis://:pw@h/0", "seed=1", "odd"]) == [
        "progress_cfg.url=redis://:***@h/0",
        "seed=1",
        "odd",
    ]


def test_the_experiment_keeps_the_real_value_and_shows_the_redacted_one() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:6399/0"
    exp = build_exp(ResNetExp, [f"progress_cfg.url={url}", f"data_cfg.cache_url={url}"])
    assert exp.progress_cfg.url == url and exp.data_cfg.cache_url == url
    shown = [
        str(exp.config_dict()),
        exp.config_yaml(),
        str(exp.overrided_cfg),
        format_help(exp, exp._changed),
    ]
    for text in shown:
        assert SECRET not in text and "redis://:***@127.0.0.1:6399/0" in text


@pytest.mark.parametrize(
    ("override", "error"),
    [
        (f"num_workers=redis://:{SECRET}@h/0", ConfigTypeError),
        (f"progress_cfg.url=http://:{SECRET}@h/0", ConfigValueError),
        (f"progress_cfg url=redis://:{SECRET}@h/0", OverrideSyntaxError),
    ],
)
def test_an_error_quoting_a_url_hides_its_password(override: str, error: type) -> None:
    with pytest.raises(error) as info:
        build_exp(MnistExp, [override])
    assert SECRET not in str(info.value) and SECRET not in repr(vars(info.value))
    assert ":***@h/0" in str(info.value)


def test_log_lines_hide_url_credentials(tmp_path: Path) -> None:
    from loguru import logger

    from tinyexp_core.logging import tiny_logger_setup

    forwarded: list[str] = []
    tiny_logger_setup(str(tmp_path), extra_sink=forwarded.append)
    # as a 0.0.1 experiment does: its raw config, real URLs included
    logger.info(f"config: {{'url': 'redis://:{SECRET}@h:6379/0'}}")
    text = (tmp_path / "log.txt").read_text()
    assert "redis://:***@h:6379/0" in text and SECRET not in text
    assert len(forwarded) == 1 and SECRET not in forwarded[0]


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leaks(root: Path) -> list[str]:
    """Files under `root` whose bytes, or (checkpoints) loaded contents, hold SECRET."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if SECRET.encode() in path.read_bytes():
            found.append(str(path))
        if path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            if SECRET in repr(state):
                found.append(f"{path} (loaded)")
    return found


@pytest.fixture
def color_folder(tmp_path: Path) -> Path:
    """2 classes x 4 PNGs of 8 x 8 (enough for one ResNet epoch on the CPU)."""
    from PIL import Image

    root = tmp_path / "images"
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            pixel = (200 * label, 40 * i, 100)
            Image.new("RGB", (8, 8), pixel).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("example", ["mnist", "resnet"])
def test_cli_run_with_passwords_in_urls_shows_them_nowhere(
    example: str, tmp_path: Path, request: pytest.FixtureRequest, capsys, monkeypatch
) -> None:
    # Nothing listens on the port: progress and the sample cache are best effort, so the run
    # trains anyway, and every place that shows or stores the URL is exercised.
    url = f"redis://:{SECRET}@127.0.0.1:{_unused_port()}/0"
    overrides = [
        f"output_root={tmp_path / 'runs'}",
        "run_id=secret-run",
        "train_cfg.num_epochs=1",
        f"progress_cfg.url={url}",
        f"ray_address=ray://admin:{SECRET}@127.0.0.1:1",  # unused with launcher=mp
    ]
    if example == "mnist":
        overrides += [
            "data_cfg.source=synthetic",
            "data_cfg.num_samples=64",
            f"data_cfg.data_root={tmp_path / 'data'}",
        ]
    else:
        folder = request.getfixturevalue("color_folder")
        overrides += [
            f"data_cfg.root={folder}",
            f"data_cfg.data_root={tmp_path / 'data'}",
            f"data_cfg.cache_url={url}",
            "data_cfg.image_size=8",
            "data_cfg.batch_size=4",
            "module_cfg.num_classes=2",
        ]
    module = f"tinyexp_core.examples.{example}_exp"
    monkeypatch.chdir(tmp_path)
    assert main(["mode=help", *overrides], f"{module}:Exp") == 0
    help_out = capsys.readouterr()
    help_text = help_out.out + help_out.err
    assert "progress_cfg.url: 'redis://:***@127.0.0.1" in help_text
    proc = subprocess.run(
        [sys.executable, "-m", module, "mode=train", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = [help_text, proc.stdout, proc.stderr]
    run_dir = tmp_path / "runs" / "secret-run"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "log.txt").is_file()
    assert list((run_dir / "checkpoints").glob("*.pt")), "the run saved checkpoints"
    assert "redis://:***@127.0.0.1" in (run_dir / "config.yaml").read_text()
    assert "redis://:***@127.0.0.1" in (run_dir / "log.txt").read_text()
    for text in outputs:
        assert SECRET not in text
    assert _leaks(tmp_path) == []
