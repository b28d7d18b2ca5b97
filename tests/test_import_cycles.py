"""scripts/check_import_cycles.py (run by `make lint`) on small packages written here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_import_cycles.py"


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def _check(root: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *packages],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_function_level_cycle_fails_naming_both_modules(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sources.py": """
                def load():
                    from pkg.folder import read  # lazy, yet still a cycle
                    return read()
            """,
            "pkg/folder.py": "from .sources import load\n\ndef read():\n    return 1\n",
        },
    )
    done = _check(tmp_path, "pkg")
    assert done.returncode == 1
    assert "import cycle: pkg.folder -> pkg.sources -> pkg.folder" in done.stdout


def test_a_three_module_cycle_through_from_imports(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/a.py": "from pkg.sub import b\n",
            "pkg/sub/b.py": "import pkg.c\n",
            "pkg/c.py": "from . import a\n",
        },
    )
    done = _check(tmp_path, "pkg")
    assert done.returncode == 1
    assert "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a" in done.stdout


def test_no_cycle_passes_and_type_checking_imports_do_not_count(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "from .config import Cfg\nfrom .experiment import Exp\n",
            "pkg/config.py": """
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.experiment import Exp

                class Cfg:
                    def build(self) -> "Exp":
                        raise NotImplementedError
            """,
            "pkg/experiment.py": "from .config import Cfg\n\nclass Exp:\n    cfg = Cfg\n",
            "other/__init__.py": "import json\nimport pkg.config\n",
        },
    )
    done = _check(tmp_path, "pkg", "other")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycles in pkg, other (4 modules)" in done.stdout


def test_a_cycle_across_two_packages_is_found(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/progress.py": "import layer.sensors\n",
            "layer/__init__.py": "",
            "layer/sensors.py": "from core import progress\n",
        },
    )
    done = _check(tmp_path, "core", "layer")
    assert done.returncode == 1
    assert "core.progress -> layer.sensors -> core.progress" in done.stdout
