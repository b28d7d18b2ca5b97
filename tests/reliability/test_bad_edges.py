"""Bad input at the edges (issue 26): each is refused with one line naming the field or
file, the value and what is allowed, before any training step, and nothing a run produced
before is overwritten.

A corrupt prepared-data manifest; a checkpoint of another experiment class as `resume_from`;
an override that is not UTF-8 or is 1 MB long; a `defs.yaml` with a wrong nested type under
`overrides`; a `metric_threshold` a `min` metric can never meet.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.config.factory import build_exp
from tinyexp_core.examples.tabular_exp import Exp as TabularExp
from tinyexp_core.files import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TABULAR = "tinyexp_core.examples.tabular_exp"


def _cli(module: str, *args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, "progress_cfg.enabled=false", "num_workers=1", *args],
        capture_output=True,
        timeout=300,
        cwd=REPO_ROOT,
    )


def _one_line_error(done: subprocess.CompletedProcess, status: int) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    return last


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory) -> Path:
    """A finished one-epoch tabular run: what later bad runs must leave alone."""
    root = tmp_path_factory.mktemp("runs")
    prepared = TabularExp().prepare_data(str(root / "store")).path
    done = _cli(TABULAR, f"output_root={root}", "run_id=done", f"data_cfg.prepared_path={prepared}",
                "train_cfg.num_epochs=1")  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return root


def _fingerprints(run_dir: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_corrupt_prepared_manifest(tabular_run: Path, tmp_path: Path) -> None:
    prepared = next((tabular_run / "store" / "datasets" / "diabetes").iterdir())
    corrupt = tmp_path / "corrupt"
    shutil.copytree(prepared, corrupt)
    (corrupt / "manifest.json").write_text('{"format": "tinyexp.tabular/1", "path": 3')
    done = _cli(
        TABULAR, f"output_root={tmp_path}", "run_id=bad", f"data_cfg.prepared_path={corrupt}"
    )
    last = _one_line_error(done, 1)
    assert f"{corrupt}/manifest.json is invalid: unreadable manifest" in last, last
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_a_checkpoint_of_another_experiment_class(tabular_run: Path, tmp_path: Path) -> None:
    checkpoint = tabular_run / "done" / "checkpoints" / "last.pt"
    before = _fingerprints(tabular_run / "done")
    done = _cli(
        "tinyexp_core.examples.mnist_exp",
        f"output_root={tmp_path}",
        "run_id=other",
        f"resume_from={checkpoint}",
        "data_cfg.source=synthetic",
        "data_cfg.num_samples=64",
    )
    last = _one_line_error(done, 2)
    assert last == (
        f"error: config key 'resume_from': got '{checkpoint}', allowed: a checkpoint of "
        "tinyexp_core.examples.mnist_exp:Exp (this one was saved by "
        "tinyexp_core.examples.tabular_exp:Exp)"
    )
    assert _fingerprints(tabular_run / "done") == before  # the other run's files untouched
    assert not (tmp_path / "other" / "config.yaml").exists()  # refused before the record
    assert not (tmp_path / "other" / "checkpoints").exists()


def test_an_override_that_is_not_utf8(tmp_path: Path) -> None:
    done = _cli(TABULAR, f"output_root={tmp_path}", b"exp_name=\xff\xfe")
    last = _one_line_error(done, 2)
    assert last == "error: config key 'exp_name': got '\\\\xff\\\\xfe', allowed: UTF-8 text"
    assert not any(tmp_path.iterdir())


def test_a_one_megabyte_override() -> None:
    # The OS refuses such an argv; the launchpad's `overrides` list does not.
    with pytest.raises(ConfigValueError) as err:
        build_exp(TabularExp, ["exp_name=" + "a" * 1_000_000])
    assert str(err.value) == (
        "config key 'exp_name': got 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa... "
        "(1000000 characters)', allowed: at most 65536 characters"
    )


def _project(root: Path, attributes: str) -> Path:
    """A dg-style project with one pipeline folder whose defs.yaml has `attributes`."""
    (root / "bp" / "defs" / "p").mkdir(parents=True)
    (root / "bp" / "__init__.py").write_text("")
    (root / "bp" / "definitions.py").write_text(
        textwrap.dedent(
            """\
            from pathlib import Path

            import dagster as dg

            from tinyexp_dagster import default_resources

            root = Path(__file__).resolve().parent.parent
            defs = dg.Definitions.merge(
                dg.load_from_defs_folder(project_root=root),
                dg.Definitions(resources=default_resources()),
            )
            """
        )
    )
    (root / "pyproject.toml").write_text(
        '[project]\nname = "bp"\nversion = "0.1.0"\n\n[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "bp"\ncode_location_target_module = "bp.definitions"\n'
    )
    defs = root / "bp" / "defs" / "p" / "defs.yaml"
    defs.write_text(
        "type: tinyexp_dagster.TinyExpPipeline\nattributes:\n  name: p\n"
        f"  experiment: {TABULAR}:Exp\n  {attributes}\n"
    )
    return defs


def _load(root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import bp.definitions"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={"PYTHONPATH": f"{root}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode != 0, "the definitions must not load"
    return done.stderr


@pytest.mark.parametrize(
    "attributes, field, value",
    [
        (
            'overrides: {"train_cfg.num_epochs": 1}',
            "attributes.overrides",
            "'train_cfg.num_epochs': 1",
        ),
        ("overrides: [[1, 2]]", "attributes.overrides.list[str].0", "input_value=[1, 2]"),
    ],
    ids=["a mapping", "a nested list"],
)
def test_a_defs_yaml_with_a_wrong_nested_type_under_overrides(
    attributes: str, field: str, value: str, tmp_path: Path
) -> None:
    defs = _project(tmp_path, attributes)
    err = _load(tmp_path)
    # Dagster's component loader names the file and line, the field and the value given.
    assert f"{defs}:5" in err and field in err and value in err, err[-3000:]


def test_a_threshold_a_min_metric_can_never_meet(tmp_path: Path) -> None:
    _project(tmp_path, "metric_threshold: -5.0")
    err = _load(tmp_path)
    assert (
        "ConfigValueError: config key 'metric_threshold': got -5.0, allowed: a value of rmse "
        "(min) in [0, inf]"
    ) in err, err[-3000:]
