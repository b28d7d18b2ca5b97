"""Issue 23: the config modules live in `tinyexp_core/config/`; their old import paths are
the same module objects (one class each, so pickles, `isinstance` and `except` agree) and
warn, and `tinyexp_core.config` still exports what the former `config.py` module did."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import warnings

import pytest

import tinyexp_core.config.factory as factory
from tinyexp_core.config import exceptions as errors
from tinyexp_core.config.experiment import ProgressCfg

MOVED = ("experiment", "overrides", "orchestration", "exceptions")


@pytest.mark.parametrize("name", MOVED)
def test_an_old_path_is_the_moved_module_and_warns(name: str) -> None:
    sys.modules.pop(f"tinyexp_core.{name}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module(f"tinyexp_core.{name}")
    assert old is importlib.import_module(f"tinyexp_core.config.{name}")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_the_config_package_exports_the_former_config_module() -> None:
    import tinyexp_core.config as config

    for name in config.__all__:
        assert getattr(config, name) is getattr(factory, name)
    from tinyexp_core.config import build_exp, load_exp_class  # noqa: F401

    with pytest.raises(AttributeError):
        _ = config.not_a_name


def test_a_pickle_naming_the_old_path_loads() -> None:
    new = pickle.dumps(ProgressCfg(throttle_s=5.0), protocol=0)
    assert b"tinyexp_core.config.experiment" in new
    old = new.replace(b"tinyexp_core.config.experiment", b"tinyexp_core.experiment")
    assert pickle.loads(old) == ProgressCfg(throttle_s=5.0)
    err = errors.ConfigValueError("throttle_s", -1, "a number of seconds >= 0")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is errors.ConfigValueError and again.value == -1


def test_the_error_module_and_env_names_import_nothing_heavy() -> None:
    code = (
        "import sys, tinyexp_core.config.exceptions, tinyexp_core.config.env\n"
        "heavy = {'torch', 'ray', 'tinyexp_core.config.experiment', 'omegaconf'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
