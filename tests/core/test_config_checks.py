"""Every check of every nested config runs at build time, through the CLI's `mode=help`:
exit 2, one line on stderr naming the key and the value, nothing written.

`CASES` lists one bad value per check. `test_every_check_has_a_case` reads the source of
every `validate()` reachable from the example experiments and fails when a check (a
`raise`, or a call to a checking helper) is reached by no case, so a new check needs a
new case here."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from tinyexp_core.cli import EXIT_USAGE, main
from tinyexp_core.config.exceptions import ConfigError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.examples.pi_exp import Exp as PiExp
from tinyexp_core.examples.resnet_exp import Exp as ResNetExp

EXPERIMENTS = {"mnist": MnistExp, "resnet": ResNetExp, "pi": PiExp}

# (experiment, key, bad value): one per check. The base configs (TinyExp, progress,
# logger, checkpoint, accelerator) are reached through mnist.
CASES = [
    ("mnist", "num_workers", "0"),
    ("mnist", "num_cpus_per_worker", "0"),
    ("mnist", "num_gpus_per_worker", "-1"),
    ("mnist", "progress_cfg.throttle_s", "-1"),
    ("mnist", "progress_cfg.finished_ttl_s", "0"),
    ("mnist", "progress_cfg.url", "http://127.0.0.1:6399/0"),
    ("mnist", "logger_cfg.level", "LOUD"),
    ("mnist", "checkpoint_cfg.keep_last_n", "0"),
    ("mnist", "checkpoint_cfg.last_ckpt_name", "epoch_0001.pt"),
    ("mnist", "checkpoint_cfg.best_ckpt_name", "last.pt"),
    ("mnist", "checkpoint_cfg.every_n_steps", "-1"),
    ("mnist", "checkpoint_cfg.every_s", "-0.5"),
    ("mnist", "checkpoint_cfg.agree_every_s", "6"),
    ("mnist", "checkpoint_cfg.agree_every_s", "-1"),
    ("mnist", "accelerator_cfg.collective_timeout_s", "0"),
    ("mnist", "data_cfg.batch_size", "0"),
    ("mnist", "data_cfg.val_fraction", "1.5"),
    ("mnist", "data_cfg.test_fraction", "-0.1"),
    ("mnist", "data_cfg.std", "0"),
    ("mnist", "module_cfg.dropout", "0.5"),
    ("mnist", "optimizer_cfg.lr", "0"),
    ("mnist", "optimizer_cfg.weight_decay", "-0.1"),
    ("mnist", "lr_scheduler_cfg.step_size", "0"),
    ("mnist", "lr_scheduler_cfg.gamma", "1.5"),
    ("mnist", "train_cfg.num_epochs", "0"),
    ("mnist", "train_cfg.step_delay_s", "61"),
    ("resnet", "data_cfg.cache_ttl_s", "-1"),
    ("resnet", "data_cfg.cache_url", "redis://127.0.0.1:6399/x"),
    ("resnet", "data_cfg.batch_size", "0"),
    ("pi", "num_samples", "0"),
    ("pi", "chunk_size", "0"),
    ("pi", "num_workers", "0"),
]


def _case_id(case: tuple[str, str, str]) -> str:
    return f"{case[0]}:{case[1]}={case[2]}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_value_exits_2_with_one_line_and_writes_nothing(
    case: tuple[str, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    exp, key, bad = case
    monkeypatch.chdir(tmp_path)  # output_root and data_root are relative: ./output, ./data
    status = main(["mode=help", f"{key}={bad}"], EXPERIMENTS[exp])
    out, err = capsys.readouterr()
    assert status == EXIT_USAGE
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"'{key}'" in lines[0] and bad in lines[0], lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written before validation passes"


def test_bad_value_through_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinyexp_core.examples.mnist_exp",
            "mode=help",
            "checkpoint_cfg.keep_last_n=0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: config key 'checkpoint_cfg.keep_last_n': got 0, allowed: an integer >= 1"
    ]
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- completeness


def _config_objects(obj: object):
    yield obj
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _config_objects(value)


def _validate_functions() -> set[types.FunctionType]:
    """Every `validate()` defined by a config class reachable from the examples."""
    found = set()
    for cls in EXPERIMENTS.values():
        for obj in _config_objects(cls()):
            for klass in type(obj).__mro__:
                if "validate" in vars(klass):
                    found.add(vars(klass)["validate"])
    return found


def _is_super_call(node: ast.AST) -> bool:
    call = node.value if isinstance(node, ast.Expr) else None
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Call)
        and getattr(call.func.value.func, "id", "") == "super"
    )


def _checks(fn: types.FunctionType) -> set[tuple[object, int]]:
    """(code, line) of each check in `fn`: a `raise`, or a call statement to a checking
    helper (`_validate_retention(...)`); `super().validate()` is the parent's checks."""
    lines, start = inspect.getsourcelines(fn)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    checks = set()
    for node in ast.walk(tree):
        is_call = isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        if isinstance(node, ast.Raise) or (is_call and not _is_super_call(node)):
            checks.add((fn.__code__, start + node.lineno - 1))
    return checks


def _check_reached(exp: str, key: str, bad: str, codes: set[object]) -> tuple[object, int]:
    """The line of the `validate()` that was running when the case's error was raised."""
    with pytest.raises(ConfigError) as info:
        build_exp(EXPERIMENTS[exp], [f"{key}={bad}"])
    reached = None
    tb = info.value.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            reached = (tb.tb_frame.f_code, tb.tb_lineno)
        tb = tb.tb_next
    assert reached is not None, f"{key}={bad} was rejected before any validate() ran"
    return reached


def test_every_check_has_a_case() -> None:
    functions = _validate_functions()
    assert len(functions) >= 10  # the walk found the configs (guards against a vacuous pass)
    expected = set().union(*(_checks(fn) for fn in functions))
    codes = {fn.__code__ for fn in functions}
    reached = {_check_reached(*case, codes) for case in CASES}
    missing = sorted(
        f"{code.co_qualname} line {line}: "
        + inspect.getsourcelines(code)[0][line - code.co_firstlineno].strip()
        for code, line in expected - reached
    )
    assert not missing, "checks without a case in CASES:\n" + "\n".join(missing)
