"""ModelRegistry: a model's versions on the storage root, and a `champion` alias that moves
only through the gate (or a recorded, manual promotion).

```
<storage_root>/models/<name>/
  <version>/model.pt (+ .sha256)   the weights, never overwritten
  <version>/version.json           metric, data version, config hash, source run, created...
  champion.json                    the alias: {"version", "moved_at", "moved_by", "reason"}
  champion_history.jsonl           every move of the alias, one JSON object a line
```

The alias is one file replaced atomically (a reader sees the old champion or the new one);
moves take an exclusive lock, so two gates that finish at once do not interleave their
read-compare-write. No Dagster, torch or ray import: the CLI reads it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tinyexp_core import storage
from tinyexp_core.config.exceptions import UnknownModelError
from tinyexp_core.files import atomic_write_text
from tinyexp_core.registry.version import ModelVersion

__all__ = ["ModelRegistry", "now_iso"]

VERSION_FILE = "version.json"
ALIAS_FILE = "champion.json"
HISTORY_FILE = "champion_history.jsonl"
LOCK_FILE = ".champion.lock"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelRegistry:
    """The versions and champion alias of one model name under `models_dir`."""

    models_dir: Path
    name: str

    def __post_init__(self) -> None:
        if not _NAME.match(self.name or ""):
            raise UnknownModelError(
                f"model name {self.name!r} is not valid: letters, digits, '_', '-', '.'"
            )
        # With an object-store root the bucket is the registry: this node's mirror catches up.
        storage.fetch_mirror(self.root)

    @property
    def root(self) -> Path:
        return Path(self.models_dir) / self.name

    def version_dir(self, version: str) -> Path:
        if not _NAME.match(version or ""):
            raise UnknownModelError(f"version {version!r} is not a valid version name")
        return self.root / version

    # ------------------------------------------------------------ versions

    def write_version(self, record: ModelVersion) -> ModelVersion:
        """Record `version.json` of a registered version (`record.version`) once; a retried
        registration of the same bytes keeps the first record (its `created`), other bytes
        are refused."""
        path = self.version_dir(record.version) / VERSION_FILE
        if path.exists():
            existing = _read(path)
            if existing.sha256 != record.sha256:
                raise FileExistsError(
                    f"version {self.name}/{record.version} exists with other weights"
                )
            return existing
        text = json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write_text(path, text)
        storage.publish(path.parent)  # the weights, then version.json (remote roots only)
        return record

    def version(self, version: str) -> ModelVersion:
        """The version's record; UnknownModelError names the versions held."""
        path = self.version_dir(version) / VERSION_FILE
        if not path.is_file():
            held = ", ".join(v.version for v in self.versions()) or "none"
            raise UnknownModelError(
                f"model {self.name} has no version {version!r} (versions: {held})"
            )
        return _read(path)

    def versions(self) -> list[ModelVersion]:
        """Every registered version's record, oldest first (an unreadable one is left out)."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob(f"*/{VERSION_FILE}"):
            with contextlib.suppress(OSError, ValueError):  # ContractError is a ValueError
                found.append(_read(path))
        return sorted(found, key=lambda v: (v.created, v.version))

    # ------------------------------------------------------------ the champion alias

    def champion(self) -> dict[str, Any] | None:
        """The alias (`version`, `moved_at`, `moved_by`, `reason`), or None before the first."""
        path = self.root / ALIAS_FILE
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def champion_version(self) -> str | None:
        alias = self.champion()
        return None if alias is None else alias["version"]

    def history(self) -> list[dict[str, Any]]:
        """Every move of the alias, oldest first."""
        path = self.root / HISTORY_FILE
        if not path.is_file():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive hold on the alias (read the champion, compare, move) across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def move_champion(self, version: str, *, moved_by: str, reason: str) -> dict[str, Any]:
        """Point the alias at `version` (which must be registered) and log the move.

        Call inside `locked()` when the decision depends on the current champion."""
        self.version(version)  # raises for an unknown version
        previous = self.champion_version()
        entry = {
            "version": version,
            "previous": previous,
            "moved_at": now_iso(),
            "moved_by": moved_by,
            "reason": reason,
        }
        # The log first: a crash between the two leaves a logged move that did not happen
        # (visible, since the alias disagrees), never an unlogged one.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / HISTORY_FILE, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry, sort_keys=True) + "\n")
            log.flush()
            os.fsync(log.fileno())
        atomic_write_text(self.root / ALIAS_FILE, json.dumps(entry, indent=2, sort_keys=True))
        storage.publish(self.root / HISTORY_FILE)  # remote roots: the log first, then the alias
        storage.publish(self.root / ALIAS_FILE)
        return entry


def _read(path: Path) -> ModelVersion:
    """A `version.json` file's record (ValueError, ContractError: not one)."""
    return ModelVersion.from_dict(json.loads(path.read_text(encoding="utf-8")))
