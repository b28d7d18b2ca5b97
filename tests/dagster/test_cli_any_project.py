"""Issue 22, must-show 3: the console command in a project without `mnist`.

A temporary project folder holds its own definitions module (`regress_defs`: a pipeline
`regressor` of the tabular example and a sweep `regressor_sweep` of 2 trials, 1 epoch, 1
rank) and a `pyproject.toml` whose `[tool.dg]` names it, as `dg` scaffolds. The command runs
as a user runs it: `python -m tinyexp_dagster.cli ...` in that folder, against a real
Dagster instance (DAGSTER_HOME), a real Redis and one local Ray started once for the module
with `tinyexp-dagster ray up` (the trials join it). `regressor` is trained by the very
command `summary`'s hint prints.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from tinyexp_dagster.cli_compare import AmbiguousReferenceError, plot_label, resolve
from tinyexp_dagster.cli_sweep_run import RUN_TAG

ROOT = Path(__file__).resolve().parents[2]
SWEEP = "regressor_sweep"
TRIALS = ["lr=0.01;dropout=0", "lr=0.01;dropout=0.1"]  # alike in their first 12 characters
DEFS = textwrap.dedent(
    """
    import dagster as dg

    from tinyexp_dagster import default_resources, pipeline_defs

    EXP = "tinyexp_core.examples.tabular_exp:Exp"
    TINY = ["train_cfg.num_epochs=1"]
    defs = dg.Definitions.merge(
        pipeline_defs("regressor", EXP, TINY),
        pipeline_defs(
            "regressor_sweep",
            EXP,
            TINY,
            sweep={"optimizer_cfg.lr": [0.01], "module_cfg.dropout": [0.0, 0.1]},
            max_concurrent=1,
        ),
        dg.Definitions(resources=default_resources()),
    )
    """
)
PYPROJECT = """[project]
name = "regress"
version = "0.0.1"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "regress"
code_location_target_module = "regress_defs"
"""


@dataclass
class Project:
    folder: Path
    env: dict[str, str]
    storage: Path
    ray_address: str

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """`tinyexp-dagster ARGS` in the project's folder (or `cwd`)."""
        command = [sys.executable, "-m", "tinyexp_dagster.cli", *args]
        return self.run(command, cwd=cwd)

    def run(self, command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(
            command,
            cwd=cwd or self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert "make " not in done.stdout + done.stderr  # hints name this project's commands
        return done

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Project]:
    """The project folder, its instance and storage root, and one `ray up` Ray for them."""
    from tinyexp_core.services.ray_head import start_head, stop_head

    folder = tmp_path_factory.mktemp("regress-project")
    (folder / "regress_defs.py").write_text(DEFS)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    home = folder / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    storage = folder / ".tinyexp"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "DAGSTER_HOME": str(home),
        "TINYEXP_STORAGE_ROOT": str(storage),
        "TINYEXP_REDIS_URL": redis_url,
        "TINYEXP_NUM_WORKERS": "1",
        "TINYEXP_CPUS_PER_WORKER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    head, _ = start_head(storage, num_cpus=2, warm_ranks=0)
    try:
        yield Project(folder, env, storage, head.address)
    finally:
        stop_head(storage)


def test_before_any_run_commands_name_this_projects_commands(project: Project) -> None:
    several = project.cli("summary")
    assert several.returncode == 2
    assert "several pipelines (regressor, regressor_sweep)" in several.stderr
    assert "--pipeline NAME" in several.stderr
    nothing = project.cli("summary", "--pipeline", "regressor")
    assert nothing.returncode == 1
    hint = "dagster job execute -m regress_defs -j regressor_training_pipeline"
    assert f"no regressor/model_evaluation materialization yet: run `{hint}` first" in (
        nothing.stderr
    )
    models = project.cli("models")
    assert models.returncode == 2 and f"`{hint}`" in models.stderr
    assert f"`tinyexp-dagster sweep {SWEEP} run --all`" in models.stderr
    listed = project.cli("sweep", SWEEP)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["trial", "state", "epochs", "metric", "run"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [(t, "not", "run") for t in TRIALS]
    not_a_sweep = project.cli("sweep", "regressor", "run", "--all")
    assert not_a_sweep.returncode == 2
    assert "pipeline 'regressor' has no sweep; sweep pipelines: regressor_sweep" in (
        not_a_sweep.stderr
    )
    unknown = project.cli("sweep", SWEEP, "run", "lr=1")
    assert unknown.returncode == 2 and "trial 'lr=1' is not a partition" in unknown.stderr


@pytest.fixture(scope="module")
def trained(project: Project) -> dict[str, str]:
    """`regressor` trained with the command `summary` names; the sweep run from the terminal."""
    hint = project.cli("summary", "--pipeline", "regressor").stderr
    command = re.search(r"run `(dagster job execute [^`]+)`", hint).group(1)
    job = project.run([sys.executable, "-m", *shlex.split(command)])
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    one = project.cli("sweep", SWEEP, "run", TRIALS[0])  # one trial by its key
    assert one.returncode == 0, one.stdout + one.stderr[-5000:]
    assert "1 trial(s), at most 1 at once" in one.stdout
    between = project.cli("sweep", SWEEP)
    states = [line.split()[:2] for line in between.stdout.splitlines()[1:]]
    assert states == [[TRIALS[0], "finished"], [TRIALS[1], "not"]], between.stdout
    swept = project.cli("sweep", SWEEP, "run", "--all")
    assert swept.returncode == 0, swept.stdout + swept.stderr[-5000:]
    return {"sweep_out": swept.stdout}


def test_sweep_run_trains_every_trial_one_at_a_time_on_the_warm_ray(
    project: Project, trained: dict[str, str]
) -> None:
    out = trained["sweep_out"]
    assert "2 trial(s), at most 1 at once" in out
    assert f"trials run on the local Ray at {project.ray_address}" in out
    assert all(f"trial {t}: SUCCESS" in out for t in TRIALS)
    with project.instance() as instance:
        pool = instance.event_log_storage.get_concurrency_info(f"tinyexp_{SWEEP}_sweep")
        assert pool.slot_count == 1  # the pipeline's max_concurrent, set in the instance
        key = dg.AssetKey([SWEEP, "trained_model"])
        assert instance.get_materialized_partitions(key) == set(TRIALS)
        runs = instance.get_runs(dg.RunsFilter(job_name=f"{SWEEP}_training_pipeline"))
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        batches = {r.tags[RUN_TAG] for r in runs}  # one per `sweep run`
        assert len(runs) == 3 and len(batches) == 2
        last = [r for r in runs if r.tags[RUN_TAG] == runs[0].tags[RUN_TAG]]  # --all
        assert sorted(r.tags["dagster/partition"] for r in last) == sorted(TRIALS)
        windows = sorted(_training_window(instance, r.run_id) for r in last)
    assert windows[0][1] <= windows[1][0], windows  # max_concurrent=1: never two at once
    # the --all batch is one sweep execution: its own board in Redis, both trials finished
    from tinyexp_core.services.redis_client import make_client
    from tinyexp_core.sweep import SweepBoard

    client = make_client(project.env["TINYEXP_REDIS_URL"])
    try:
        board = SweepBoard(client, f"tinyexp:sweep:{SWEEP}:{last[0].tags[RUN_TAG]}")
        assert {r["trial"]: r["status"] for r in board.rows()} == dict.fromkeys(TRIALS, "finished")
    finally:
        client.close()


def _training_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    times = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is not None and event.step_key == f"{SWEEP}__trained_model":
            times.setdefault(event.event_type, record.timestamp)
    return times[dg.DagsterEventType.STEP_START], times[dg.DagsterEventType.STEP_SUCCESS]


def test_sweep_list_and_leaderboard(project: Project, trained: dict[str, str]) -> None:
    listed = project.cli("sweep", SWEEP)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    with project.instance() as instance:
        key = dg.AssetKey([SWEEP, "trained_model"])
        for trial in TRIALS:
            record = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[trial]), limit=1
            ).records[0]
            rmse = record.asset_materialization.metadata["best_val_rmse"].value
            assert rows[trial] == [trial, "finished", "1", "val_rmse", f"{rmse:.4f}",
                                   record.run_id[:8]]  # fmt: skip
    board = project.cli("sweep", SWEEP, "leaderboard")
    assert board.returncode == 0, board.stderr
    lines = board.stdout.splitlines()
    assert lines[0].split()[:6] == ["rank", "trial", "status", "epoch", "best", "rmse"]
    ranked = [line.split() for line in lines[1:3]]
    assert [r[0] for r in ranked] == ["1", "2"] and {r[1] for r in ranked} == set(TRIALS)
    best = [float(r[4]) for r in ranked]
    assert best == sorted(best)  # rmse: lower first
    assert lines[3].startswith(f"leader: {ranked[0][1]}")


def test_summary_and_models_without_mnist(project: Project, trained: dict[str, str]) -> None:
    summary = project.cli("summary", "-p", "regressor")
    assert summary.returncode == 0, summary.stderr
    assert re.search(r"^regressor rmse \(test split\): \d+\.\d{4}$", summary.stdout, re.M)
    assert "open the UI: dagster dev, then http://127.0.0.1:3000" in summary.stdout
    models = project.cli("models")
    assert models.returncode == 0, models.stderr
    table = {line.split()[0]: line.split() for line in models.stdout.splitlines()[1:3]}
    assert set(table) == {"regressor", SWEEP}
    assert table["regressor"][1] == "1" and table[SWEEP][1] == "3"  # one trial ran twice
    one = project.cli("models", SWEEP)
    assert one.returncode == 0, one.stderr
    champion = one.stdout.strip().splitlines()[-1].split()[1]
    assert table[SWEEP][2] == champion
    assert [line.split()[1] for line in one.stdout.splitlines() if line.startswith("*")] == [
        champion
    ]


def test_compare_by_short_run_ids_with_distinct_plot_labels(
    project: Project, trained: dict[str, str], tmp_path: Path
) -> None:
    with project.instance() as instance:
        key = dg.AssetKey([SWEEP, "trained_model"])
        by_trial = {
            trial: instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[trial]), limit=1
            )
            .records[0]
            .run_id
            for trial in TRIALS
        }
        regressor = instance.get_runs(dg.RunsFilter(job_name="regressor_training_pipeline"))
    a, b = by_trial[TRIALS[0]], by_trial[TRIALS[1]]
    plot = tmp_path / "curves.png"
    done = project.cli("compare", a[:8], b[:8], "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    assert f"A: {a[:8]}  (dagster run {a}," in done.stdout
    assert f"partition {TRIALS[1]})" in done.stdout
    legend = f"(legend: A {TRIALS[0]} (run {a[:8]}) | B {TRIALS[1]} (run {b[:8]}))"
    assert legend in done.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # another pipeline's run, by its id, beside a trial named by its partition key
    across = project.cli("compare", regressor[0].run_id[:8], TRIALS[1])
    assert across.returncode == 0, across.stderr
    unknown = project.cli("compare", "zz-no-such", a[:8])
    assert unknown.returncode == 2
    assert "'zz-no-such' is not a run id, partition key or model version of any" in (unknown.stderr)


def test_location_options_from_another_folder(project: Project, trained, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    defs = str(project.folder / "regress_defs.py")
    by_file = project.cli("sweep", SWEEP, "-f", defs, cwd=elsewhere)
    assert by_file.returncode == 0 and "finished" in by_file.stdout, by_file.stderr
    by_module = project.cli(
        "summary", "-m", "regress_defs", "-d", str(project.folder), "-p", SWEEP, cwd=elsewhere
    )
    assert by_module.returncode == 0, by_module.stderr
    assert f"dagster dev -m regress_defs -d {project.folder}" in by_module.stdout
    workspace = elsewhere / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_file:\n      relative_path: {defs}\n"
        f"      working_directory: {project.folder}\n"
    )
    by_workspace = project.cli("summary", cwd=elsewhere)  # workspace.yaml in the folder
    assert by_workspace.returncode == 2 and "(regressor, regressor_sweep)" in by_workspace.stderr
    nowhere = project.cli("summary", cwd=tmp_path)
    assert nowhere.returncode == 2 and "no code location: pass -m MODULE" in nowhere.stderr


# ---------------------------------------------------------------- run-id prefixes (unit)


class _Record(SimpleNamespace):
    pass


def _fake_instance(run_ids: list[str]) -> SimpleNamespace:
    key = dg.AssetKey(["p", "trained_model"])
    records = [
        _Record(
            run_id=run_id,
            storage_id=i,
            asset_materialization=dg.AssetMaterialization(
                key, metadata={"primary_metric": "rmse (min)", "run_dir": f"/runs/{run_id}"}
            ),
        )
        for i, run_id in enumerate(run_ids)
    ]
    return SimpleNamespace(
        get_asset_keys=lambda: [key],
        fetch_materializations=lambda k, limit: SimpleNamespace(records=list(records)),
    )


def test_a_prefix_of_several_runs_is_an_error_listing_them() -> None:
    instance = _fake_instance(["abc12345-1", "abc99999-2", "def00000-3"])
    assert resolve(instance, None, "abc1").run_id == "abc12345-1"
    assert resolve(instance, "p", "d").run_id == "def00000-3"
    with pytest.raises(AmbiguousReferenceError) as err:
        resolve(instance, None, "abc")
    assert "'abc' is the prefix of 2 runs" in str(err.value)
    assert "run abc12345-1 (p/trained_model)" in str(err.value)
    assert "run abc99999-2 (p/trained_model)" in str(err.value)
    exact = _fake_instance(["abc", "abcdef"])
    assert resolve(exact, None, "abc").run_id == "abc"  # an exact id wins over a prefix


def test_plot_labels_keep_whole_trial_keys() -> None:
    runs = [SimpleNamespace(partition=t, run_id=f"{i}" * 36) for i, t in enumerate(TRIALS)]
    labels = [plot_label(tag, run) for tag, run in zip("AB", runs, strict=True)]
    assert labels == [f"A {TRIALS[0]} (run 00000000)", f"B {TRIALS[1]} (run 11111111)"]
