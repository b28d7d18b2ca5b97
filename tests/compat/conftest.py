"""TinyExp 0.0.1, fetched at test time and ported by rewriting its import lines only.

Its code is never committed here: the release's sdist is downloaded with pip into
`<repo>/.cache/compat/` (git-ignored, reused once present, checked against a pinned
sha256), unpacked, and its `tests/` and `tinyexp/examples/` are copied with their
`tinyexp` imports mapped to `tinyexp_core` (tests/compat/rewrite.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compat.rewrite import port_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "compat"
REQUIREMENT = "tinyexp==0.0.1"
SDIST_NAME = "tinyexp-0.0.1.tar.gz"
SDIST_SHA256 = "6f41431b0d9b10ab9e8e2add6c8f7e5f00c531376f481bb253774f3206782174"
PORTED_PATHS = ["tests", "tinyexp/examples"]


@dataclass(frozen=True)
class PortedRelease:
    """The rewritten copy: its root, and the files left out with the module they import."""

    root: Path
    skipped: dict[str, str]

    @property
    def examples(self) -> Path:
        return self.root / "tinyexp" / "examples"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sdist(cache_dir: Path = CACHE_DIR) -> Path:
    """The 0.0.1 sdist in `cache_dir`, downloaded with pip unless already there."""
    path = cache_dir / SDIST_NAME
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--disable-pip-version-check", "-d", str(cache_dir), REQUIREMENT]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0 or not path.is_file():
            pytest.fail(
                f"cannot fetch {REQUIREMENT} (the TinyExp 0.0.1 sdist) with pip into "
                f"{cache_dir}: exit {proc.returncode}\n{proc.stderr[-2000:]}\n"
                f"Offline? Put {SDIST_NAME} (sha256 {SDIST_SHA256}) in that directory.",
                pytrace=False,
            )
    digest = _sha256(path)
    if digest != SDIST_SHA256:
        pytest.fail(
            f"{path} has sha256 {digest}, expected {SDIST_SHA256}; delete it to re-download",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def tinyexp_001(tmp_path_factory: pytest.TempPathFactory) -> PortedRelease:
    """TinyExp 0.0.1's tests and examples, with import lines rewritten to tinyexp_core."""
    sdist = fetch_sdist()
    unpacked = tmp_path_factory.mktemp("tinyexp-0.0.1-sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(unpacked, filter="data")
    src = unpacked / SDIST_NAME.removesuffix(".tar.gz")
    root = tmp_path_factory.mktemp("tinyexp-0.0.1-ported")
    skipped = port_tree(src, root, PORTED_PATHS)
    return PortedRelease(root=root, skipped=skipped)


def compat_env(**extra: str) -> dict[str, str]:
    """Environment for a subprocess on the ported copy: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["WANDB_MODE"] = "disabled"  # 0.0.1's examples import wandb; nothing may reach out
    env["WANDB_SILENT"] = "true"
    env.update(extra)
    return env
