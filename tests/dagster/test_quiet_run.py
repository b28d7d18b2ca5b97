"""Issue 22, must-show 4 (the warnings): `make run`'s job and a walkthrough-style project's
`dagster job execute` print no Dagster `BetaWarning` / `PreviewWarning` for this project's
own calls, no `code location name ... does not match` warning, and Ray's token-auth notice
at most once (docs/running-modes.md explains it).

Each run is one real `dagster job execute` process with its own local Ray (as `make run`
starts it), one epoch, on the session's Redis."""

from __future__ import annotations

import textwrap
from pathlib import Path

import yaml

from tests.dagster.dg_project import DIGITS, MODULE, TABULAR, environment, run, write_project

NOISE = ("BetaWarning", "PreviewWarning", "does not match the name", "DAGSTER_IS_DEV_CLI")
RAY_TOKEN_NOTICE = "Token authentication is"
# A sweep in the project: its checks are partitioned (a Dagster preview feature).
SWEEP_YAML = textwrap.dedent(
    f"""\
    type: tinyexp_dagster.TinyExpPipeline
    attributes:
      name: sweep
      experiment: {TABULAR}
      overrides: ["train_cfg.num_epochs=1"]
      sweep: {{optimizer_cfg.lr: [0.001, 0.003]}}
    """
)


def assert_quiet(output: str) -> None:
    noisy = [line for line in output.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, "\n".join(noisy)
    assert output.count(RAY_TOKEN_NOTICE) <= 1, output[-4000:]


def job_execute(module: str, job: str, cwd: Path, env: dict[str, str], config: dict) -> str:
    config_file = cwd / f"{job}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    argv = ["dagster", "job", "execute", "-m", module, "-j", job, "-c", str(config_file)]
    out = run(argv, cwd, env, timeout=400)
    output = out.stdout + out.stderr
    assert out.returncode == 0, output[-4000:]
    assert "RUN_SUCCESS" in output, output[-4000:]
    return output


def test_walkthrough_job_execute_is_quiet(tmp_path: Path, redis_url: str) -> None:
    project = write_project(
        tmp_path / "project", folders={"regressor": TABULAR}, python={"digits": DIGITS}
    )
    (project / "team_models" / "defs" / "sweep").mkdir()
    (project / "team_models" / "defs" / "sweep" / "defs.yaml").write_text(SWEEP_YAML)
    env = environment(
        project,
        tmp_path / "dagster_home",
        TINYEXP_STORAGE_ROOT=str(tmp_path / "storage"),
        TINYEXP_REDIS_URL=redis_url,
        TINYEXP_NUM_WORKERS="1",
    )
    env.pop("RAY_ADDRESS", None)  # the run starts its own local Ray, as a user's would
    assert_quiet(job_execute(MODULE, "regressor_training_pipeline", project, env, {}))


def test_make_run_job_is_quiet(tmp_path: Path, redis_url: str) -> None:
    """`make run`: `dagster job execute -m tinyexp_dagster.definitions -j
    mnist_training_pipeline`, here on one epoch."""
    env = environment(
        tmp_path,
        tmp_path / "dagster_home",
        TINYEXP_STORAGE_ROOT=str(tmp_path / "storage"),
        TINYEXP_REDIS_URL=redis_url,
    )
    env.pop("RAY_ADDRESS", None)
    config = {
        "ops": {
            "mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=1"]}},
            "mnist__model_evaluation": {"config": {"threshold": 0.5}},
        }
    }
    output = job_execute(
        "tinyexp_dagster.definitions", "mnist_training_pipeline", tmp_path, env, config
    )
    assert_quiet(output)
