"""scripts/check_code_shape.py (run by `make lint`): the examples pass it, and it catches
what it promises to catch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_code_shape.py"


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_the_examples_train_paths_are_short_and_read_no_environment() -> None:
    examples = "tinyexp_core/examples"
    done = _check("--max-function-lines", "60", "--no-environ", examples, examples)
    assert done.returncode == 0, done.stdout


def test_a_long_function_and_environment_reads_are_reported(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "exp.py").write_text(
        textwrap.dedent(
            """\
            import os
            from os import getenv

            def train():
            """
        )
        + body
        + "\n    return os.environ.get('TINYEXP_ASSET')\n"
    )
    done = _check("--max-function-lines", "60", "--no-environ", str(tmp_path), str(tmp_path))
    assert done.returncode == 1
    out = done.stdout
    assert "function train has 62 lines (at most 60)" in out
    assert "from os import getenv" in out and "(.environ)" in out


def test_a_long_module_is_reported(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("x = 1\n" * 401)
    done = _check("--max-module-lines", "400", str(tmp_path))
    assert done.returncode == 1 and "401 lines (at most 400)" in done.stdout


def test_known_debt_is_tolerated_and_a_paid_entry_must_leave_the_list(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("x = 1\n" * 401)
    (tmp_path / "small.py").write_text("x = 1\n")
    debt = tmp_path / "debt.txt"
    debt.write_text(f"# known\n{(tmp_path / 'big.py').as_posix()}\n")
    assert _check("--max-module-lines", "400", "--debt", str(debt), str(tmp_path)).returncode == 0
    debt.write_text(f"{(tmp_path / 'small.py').as_posix()}\n{(tmp_path / 'big.py').as_posix()}\n")
    done = _check("--max-module-lines", "400", "--debt", str(debt), str(tmp_path))
    assert done.returncode == 1 and "small.py no longer exceeds its limit" in done.stdout


def test_the_two_packages_keep_their_shape_with_the_listed_debt() -> None:
    done = _check(
        "--max-module-lines", "400", "--max-function-lines", "60",
        "--debt", "scripts/code_shape_debt.txt", "tinyexp_core", "tinyexp_dagster",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout
