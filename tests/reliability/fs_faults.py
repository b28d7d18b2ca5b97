"""Run inside `unshare -rm` (a private mount namespace): train the tabular example on a
filesystem that fails for real, then resume once the fault is gone.

    unshare -rm python -m tests.reliability.fs_faults FAULT WORKDIR PREPARED_PATH OUT_JSON

FAULT is `full` (a tmpfs filled up after the first epoch: ENOSPC) or `readonly` (the run's
checkpoint directory bind-mounted read-only after the first epoch: EROFS). Three runs of the
example's CLI: one epoch; the same run resumed to three epochs under the fault (it must
fail); the fault removed, resumed again (it must finish). The report (JSON) holds each run's
exit status and stderr, and what the checkpoint directory held after the failed run; the
final last.pt is copied to WORKDIR/final.pt (the mount goes when this process ends).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

MODULE = "tinyexp_core.examples.tabular_exp"


def _sh(*args: str) -> None:
    subprocess.run(args, check=True)


def _cli(root: Path, prepared: str, *extra: str) -> dict:
    args = [sys.executable, "-m", MODULE, f"output_root={root}", "run_id=r"]
    args += [f"data_cfg.prepared_path={prepared}", "progress_cfg.enabled=false", *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    return {"status": done.returncode, "stderr": done.stderr[-4000:]}


def _listing(directory: Path) -> dict:
    from tinyexp_core import checkpoint as ckpt

    files = sorted(p.name for p in directory.iterdir())
    try:
        ckpt.verify_checkpoint(directory / "last.pt")
        epoch = int(ckpt.load_checkpoint(directory / "last.pt")["epoch"])
        verified = True
    except Exception as err:  # reported, the test asserts on it
        verified, epoch = f"{type(err).__name__}: {err}", -1
    return {"files": files, "last_verifies": verified, "last_epoch": epoch}


def main(fault: str, workdir: str, prepared: str, out: str) -> None:
    work = Path(workdir)
    mount = work / "fs"
    mount.mkdir(parents=True, exist_ok=True)
    _sh("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount))
    report: dict = {}
    checkpoints = mount / "r" / "checkpoints"
    report["first"] = _cli(mount, prepared, "train_cfg.num_epochs=1")
    if fault == "full":
        filler = mount / "filler"
        # Leave 16 KiB: logs and config.yaml still fit, a ~40 KB checkpoint does not.
        free = shutil.disk_usage(mount).free - 16 * 1024
        _sh("dd", "if=/dev/zero", f"of={filler}", "bs=4096", f"count={free // 4096}", "status=none")
    else:
        _sh("mount", "--bind", str(checkpoints), str(checkpoints))
        _sh("mount", "-o", "remount,bind,ro", str(checkpoints))
    report["faulty"] = _cli(mount, prepared, "train_cfg.num_epochs=3", "resume_from=auto")
    report["after_fault"] = _listing(checkpoints)
    if fault == "full":
        filler.unlink()
    else:
        _sh("umount", str(checkpoints))
    report["resumed"] = _cli(mount, prepared, "train_cfg.num_epochs=3", "resume_from=auto")
    for name in ("last.pt", "last.pt.sha256"):  # the sidecar too: loading verifies it
        shutil.copy(checkpoints / name, work / name.replace("last", "final"))
    Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:5])
