"""`RayDDPResource(ship_code=...)`: the runtime_env that carries the experiment's code."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.launchers.ship import code_runtime_env
from tinyexp_dagster.resources import RayDDPResource


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    pkg = tmp_path / "teamexps"
    (pkg / "vision").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "vision" / "__init__.py").write_text("")
    (pkg / "vision" / "digits.py").write_text(
        textwrap.dedent(
            """
            from tinyexp_core.examples.mnist_exp import Exp as Base

            class Exp(Base):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("teamexps")]:
        del sys.modules[name]


def test_module_ships_the_top_level_package(user_package):
    from teamexps.vision.digits import Exp

    spec = RayDDPResource(ship_code="module").spec(Exp())
    assert spec.runtime_env == {"py_modules": [str(user_package)]}


def test_project_ships_the_working_directory_without_heavy_folders(user_package, tmp_path):
    from teamexps.vision.digits import Exp

    env = code_runtime_env("project", Exp(), working_dir=str(tmp_path))
    assert env["working_dir"] == str(tmp_path)
    assert {".venv/", ".git/", ".tinyexp/", "*.pt"} <= set(env["excludes"])


def test_off_ships_nothing_and_a_lone_module_file_is_refused(tmp_path, monkeypatch):
    from tinyexp_core.examples.mnist_exp import Exp

    assert RayDDPResource().spec(Exp()).runtime_env == {}
    (tmp_path / "lonely_exp.py").write_text(
        "from tinyexp_core.examples.mnist_exp import Exp as B\nclass Exp(B):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from lonely_exp import Exp as Lonely

    with pytest.raises(ConfigValueError, match="project"):
        code_runtime_env("module", Lonely())
    with pytest.raises(ConfigValueError, match="ship_code"):
        code_runtime_env("everything", Lonely())
