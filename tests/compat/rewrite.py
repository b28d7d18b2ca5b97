"""Port TinyExp 0.0.1 sources to this core by rewriting their import lines, and only those.

The mapping below is the whole port: each 0.0.1 module an example or a unit test imports
from, and the `tinyexp_core` module that provides the same names. A line that is not an
import of `tinyexp` is never touched; `check_only_imports_changed` proves it for every
rewritten file, so a port that needed any other edit fails instead of passing quietly.
"""

from __future__ import annotations

import re
from pathlib import Path

# 0.0.1 module -> tinyexp_core module with the same public names.
IMPORT_MAP: dict[str, str] = {
    "tinyexp": "tinyexp_core",
    "tinyexp.exceptions": "tinyexp_core.config.exceptions",
    "tinyexp.tiny_engine.accelerator": "tinyexp_core.accelerators",
    "tinyexp.dataset.sampler": "tinyexp_core.data",
    "tinyexp.dataset.fake_dataloader": "tinyexp_core.data",
    "tinyexp.utils.log_utils": "tinyexp_core.logging",
    "tinyexp.utils.model_utils": "tinyexp_core.training.ema",
    # the package root re-exports it lazily, wherever the Redis helpers live
    "tinyexp.utils.redis_utils": "tinyexp_core",
}

# 0.0.1 modules with no counterpart here, and why; a file importing one is not ported.
UNPORTED_MODULES: dict[str, str] = {
    "tinyexp.utils.ray_utils": (
        "0.0.1's Hydra launcher (`@hydra.main`, process-tree launcher detection, hand-made "
        "placement groups); this core launches with tinyexp_core.launchers.ray.RayLauncher "
        "and does not depend on Hydra (DESIGN.md)"
    ),
}

_FROM_RE = re.compile(
    r"^(?P<indent>\s*)from (?P<module>tinyexp(?:\.[\w.]+)?) import (?P<names>.+)$"
)
_IMPORT_RE = re.compile(r"^(?P<indent>\s*)import (?P<module>tinyexp(?:\.[\w.]+)?)(?P<rest>\s.*)?$")


class RewriteError(Exception):
    """A 0.0.1 source cannot be ported by changing its import lines alone."""


def unported_module(text: str) -> str | None:
    """The first unported 0.0.1 module `text` imports, if any."""
    for line in text.splitlines():
        match = _FROM_RE.match(line) or _IMPORT_RE.match(line)
        if match and match["module"] in UNPORTED_MODULES:
            return match["module"]
    return None


def _rewrite_line(line: str, where: str) -> str:
    match = _FROM_RE.match(line) or _IMPORT_RE.match(line)
    if match is None:
        return line
    module = match["module"]
    target = IMPORT_MAP.get(module)
    if target is None:
        raise RewriteError(f"{where}: no mapping for module {module!r} in IMPORT_MAP")
    if "names" in match.groupdict() and match["names"] is not None:
        if match["names"].strip().startswith("("):
            raise RewriteError(f"{where}: multi-line import of {module!r} is not supported")
        return f"{match['indent']}from {target} import {match['names']}"
    rest = match["rest"] or ""
    if not rest.strip().startswith("as "):
        # `import tinyexp.x` is used as `tinyexp.x.name`: code lines, not imports, would change.
        raise RewriteError(f"{where}: `import {module}` without `as` cannot be mapped")
    return f"{match['indent']}import {target}{rest}"


def rewrite_imports(text: str, where: str = "<source>") -> str:
    """`text` with every `tinyexp` import line mapped through IMPORT_MAP."""
    lines = text.split("\n")
    out = [_rewrite_line(line, f"{where}:{no}") for no, line in enumerate(lines, 1)]
    rewritten = "\n".join(out)
    check_only_imports_changed(text, rewritten, where)
    return rewritten


def check_only_imports_changed(original: str, rewritten: str, where: str = "<source>") -> None:
    """Raise RewriteError unless the two texts differ only on `tinyexp` import lines."""
    old, new = original.split("\n"), rewritten.split("\n")
    if len(old) != len(new):
        raise RewriteError(f"{where}: line count changed ({len(old)} -> {len(new)})")
    for no, (a, b) in enumerate(zip(old, new, strict=True), 1):
        if a == b:
            continue
        if not (_FROM_RE.match(a) or _IMPORT_RE.match(a)):
            raise RewriteError(f"{where}:{no}: a non-import line changed: {a!r} -> {b!r}")
        if not b.lstrip().startswith(("from tinyexp_core", "import tinyexp_core")):
            raise RewriteError(f"{where}:{no}: import rewritten to {b!r}, not to tinyexp_core")


def port_tree(src: Path, dst: Path, relpaths: list[str]) -> dict[str, str]:
    """Copy the .py files under each of `relpaths` from `src` to `dst`, imports rewritten.

    Files that import an unported module are not copied; returns {relpath: module} for them.
    """
    skipped: dict[str, str] = {}
    for rel in relpaths:
        for path in sorted((src / rel).rglob("*.py")):
            name = path.relative_to(src).as_posix()
            text = path.read_text(encoding="utf-8")
            module = unported_module(text)
            if module is not None:
                skipped[name] = module
                continue
            target = dst / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rewrite_imports(text, name), encoding="utf-8")
    return skipped
