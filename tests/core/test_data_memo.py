"""A preparation of unchanged inputs is not run again (tinyexp_core/data_memo.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tinyexp_core.data_memo import prepared_once


def _preparer(out: Path, calls: list[str], version: str = "v1"):
    def prepare() -> dict:
        calls.append(version)
        folder = out / "src" / version
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train.pt").write_bytes(b"x" * 10)
        manifest = {"data_version": version, "path": str(folder),
                    "files": {"train.pt": {"size": 10}}}  # fmt: skip
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    return prepare


def test_the_same_params_over_unchanged_files_prepare_once(tmp_path: Path) -> None:
    out, raw, calls = tmp_path / "datasets", tmp_path / "raw.csv", []
    raw.write_text("1,2,3")
    first = prepared_once(out, {"seed": 0}, [raw], _preparer(out, calls))
    again = prepared_once(out, {"seed": 0}, [raw], _preparer(out, calls))
    assert calls == ["v1"] and again == first


def test_new_data_other_params_or_a_damaged_directory_prepare_again(tmp_path: Path) -> None:
    out, raw, calls = tmp_path / "datasets", tmp_path / "raw.csv", []
    raw.write_text("1,2,3")
    prepared_once(out, {"seed": 0}, [raw], _preparer(out, calls))
    stat = raw.stat()
    raw.write_text("4,5,6")  # same size, and the old mtime put back: the ctime still moves
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    prepared_once(out, {"seed": 0}, [raw], _preparer(out, calls, "v2"))
    prepared_once(out, {"seed": 1}, [raw], _preparer(out, calls, "v3"))
    (out / "src" / "v3" / "train.pt").write_bytes(b"short")  # not what the manifest says
    prepared_once(out, {"seed": 1}, [raw], _preparer(out, calls, "v3"))
    assert calls == ["v1", "v2", "v3", "v3"]


def test_unlisted_or_missing_files_prepare_every_time(tmp_path: Path) -> None:
    out, calls = tmp_path / "datasets", []
    for _ in range(2):
        prepared_once(out, {"seed": 0}, None, _preparer(out, calls))
        prepared_once(out, {"seed": 0}, [tmp_path / "absent.csv"], _preparer(out, calls))
    assert calls == ["v1"] * 4


def test_the_examples_second_preparation_loads_neither_torch_nor_the_source(
    tmp_path: Path,
) -> None:
    code = (
        "import sys, json; from tinyexp_core.config.factory import build_exp; "
        "from tinyexp_core.examples.mnist_exp import Exp; "
        f"p = build_exp(Exp, []).prepare_data({str(tmp_path)!r}); "
        "print(json.dumps([p.data_version, 'torch' in sys.modules, 'sklearn' in sys.modules]))"
    )
    runs = [
        json.loads(
            subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(2)
    ]
    assert runs[0][1:] == [True, True]  # the first one prepares
    assert runs[1] == [runs[0][0], False, False]  # the same version, nothing loaded
