"""The port changes import lines and nothing else, or refuses."""

from __future__ import annotations

import pytest

from tests.compat.rewrite import (
    RewriteError,
    check_only_imports_changed,
    rewrite_imports,
    unported_module,
)


def test_import_lines_are_mapped_and_other_lines_kept() -> None:
    source = (
        "import os\n"
        "from tinyexp import TinyExp, store_and_run_exp\n"
        "from tinyexp.utils.redis_utils import RedisClusterManager\n"
        "    from tinyexp.tiny_engine.accelerator import CPUAccelerator\n"
        "import tinyexp.exceptions as errors\n"
        'print("tinyexp stays tinyexp in text")\n'
    )
    assert rewrite_imports(source) == (
        "import os\n"
        "from tinyexp_core import TinyExp, store_and_run_exp\n"
        "from tinyexp_core import RedisClusterManager\n"
        "    from tinyexp_core.accelerators import CPUAccelerator\n"
        "import tinyexp_core.config.exceptions as errors\n"
        'print("tinyexp stays tinyexp in text")\n'
    )


def test_an_unmapped_module_or_unaliased_import_fails_the_rewrite() -> None:
    with pytest.raises(RewriteError, match="no mapping for module 'tinyexp.unknown'"):
        rewrite_imports("from tinyexp.unknown import thing\n")
    with pytest.raises(RewriteError, match="without `as`"):
        rewrite_imports("import tinyexp.exceptions\n")


def test_a_changed_non_import_line_fails_the_check() -> None:
    with pytest.raises(RewriteError, match="a non-import line changed"):
        check_only_imports_changed("x = 1\n", "x = 2\n")
    with pytest.raises(RewriteError, match="line count changed"):
        check_only_imports_changed("x = 1\n", "x = 1\ny = 2\n")
    with pytest.raises(RewriteError, match="not to tinyexp_core"):
        check_only_imports_changed("from tinyexp import A\n", "from elsewhere import A\n")


def test_unported_modules_are_detected() -> None:
    text = "from tinyexp.utils.ray_utils import get_launcher\n"
    assert unported_module(text) == "tinyexp.utils.ray_utils"
    assert unported_module("from tinyexp import TinyExp\n") is None
