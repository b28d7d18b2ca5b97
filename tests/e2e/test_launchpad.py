"""The launchpad path: `mnist_training_pipeline`'s launchpad in a real (headless) Chromium
shows the typed `exp` config (`optimizer_cfg.lr`); a run launched from it with a new `lr`
trains with that value; `lr: "fast"` is refused before any step, in the UI and by
`dagster job execute -c`."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import CHROMIUM_ARGS, E2EDeployment
from tests.e2e.helpers import (
    dagster_cmd,
    dagster_dev,
    graphql,
    run_cli,
    run_failure_report,
    wait_for,
)
from tests.e2e.test_ui import _dismiss_community_dialog

pytestmark = pytest.mark.e2e

MODULE = "tinyexp_dagster.definitions"
JOB = "mnist_training_pipeline"
TRAIN_OP = "mnist__trained_model"
# Twice the default (1e-3): a different value that still passes the evaluation gate (accuracy
# >= 0.9 after the one epoch; Adam at 0.0123 diverges to about 0.15 and fails the run).
NEW_LR = 0.002
VIEWPORT = {"width": 1600, "height": 1000}
UI_TIMEOUT_MS = 120_000  # a loaded 2-core box is slow to answer the launchpad's queries
# How long a refused launch is watched for a run that should not appear.
NO_RUN_WATCH_S = 8

REPOSITORIES_QUERY = """
{
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes { name location { name } jobs { name } }
    }
  }
}
"""

# Scroll CodeMirror so that the first `optimizer_cfg:` after `<op>:` is near the top.
_SCROLL_TO_OPTIMIZER_JS = """(el, op) => {
  const cm = el.CodeMirror;
  const lines = cm.getValue().split("\\n");
  const start = lines.findIndex((l) => l.trim() === op + ":");
  const line = lines.findIndex((l, i) => i > start && l.trim() === "optimizer_cfg:");
  cm.scrollTo(null, cm.heightAtLine(Math.max(line - 4, 0), "local"));
}"""


def _run_config(lr: object) -> dict:
    """Run config with `exp.optimizer_cfg.lr` set and one epoch (the dataset keeps defaults)."""
    return {
        "ops": {
            TRAIN_OP: {
                "config": {
                    "exp": {"optimizer_cfg": {"lr": lr}},
                    "overrides": ["train_cfg.num_epochs=1"],
                }
            }
        }
    }


def _playground_url(port: int) -> str:
    """The job's launchpad: `/locations/<repo>@<location>/jobs/<job>/playground` (the UI
    writes a `Definitions` repository, `__repository__`, as the location alone)."""
    nodes = graphql(port, REPOSITORIES_QUERY)["repositoriesOrError"]["nodes"]
    (repo,) = [n for n in nodes if JOB in {j["name"] for j in n["jobs"]}]
    location = repo["location"]["name"]
    address = location if repo["name"] == "__repository__" else f"{repo['name']}@{location}"
    return f"http://127.0.0.1:{port}/locations/{address}/jobs/{JOB}/playground"


def _editor_text(page) -> str:
    """The launchpad editor's whole document (CodeMirror draws only the visible lines)."""
    return page.locator(".CodeMirror").first.evaluate("el => el.CodeMirror.getValue()")


def _type_config(page, config: dict) -> None:
    """Replace the editor's YAML the way a user does: focus, select all, type."""
    text = yaml.safe_dump(config, sort_keys=False)
    page.locator(".CodeMirror").first.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)
    page.keyboard.press("Escape")  # close an autocompletion popup, if one opened
    assert yaml.safe_load(_editor_text(page)) == config, (
        f"the editor holds:\n{_editor_text(page)}\nnot the typed config:\n{text}"
    )


def _launch_button(page):
    """The launchpad's launch button ("Launch Run"; "Materialize" for an asset selection;
    its name may carry the icon's label too)."""
    return page.get_by_role("button", name=re.compile(r"\b(Launch Run|Materialize)\b", re.I)).first


def _step_starts(instance, run_id: str) -> list[str]:
    import dagster as dg

    return [
        r.dagster_event.step_key
        for r in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    ]


@pytest.mark.timeout(600)
def test_launchpad_exp_config(
    deployment: E2EDeployment, artifacts_dir: Path, chromium_executable: str, tmp_path: Path
) -> None:
    """The launchpad shows `exp.optimizer_cfg.lr`; a launch with `lr: 0.002` trains with it;
    `lr: "fast"` is refused (UI and CLI) and no step starts."""
    import dagster as dg
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    with (
        dagster_dev(deployment.env, deployment.logs / "dagster-dev.log") as (dev, port),
        deployment.instance() as instance,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(_playground_url(port), wait_until="domcontentloaded")
            page.locator(".CodeMirror").first.wait_for()
            _dismiss_community_dialog(page)

            # A new launchpad session opens with the job's default config: the `exp`
            # schema generated from the experiment's dataclasses, with their defaults.
            wait_for(
                lambda: "optimizer_cfg" in _editor_text(page),
                timeout_s=120,
                what="the default config (with exp.optimizer_cfg) in the editor",
            )
            scaffold = yaml.safe_load(_editor_text(page))
            exp = scaffold["ops"][TRAIN_OP]["config"]["exp"]
            assert exp["optimizer_cfg"]["lr"] == 0.001, f"scaffolded exp: {exp}"
            # ... and drawn: scroll the editor to the training op's `optimizer_cfg`.
            page.locator(".CodeMirror").first.evaluate(_SCROLL_TO_OPTIMIZER_JS, TRAIN_OP)
            editor_line = page.locator(".CodeMirror-line").filter(visible=True)
            editor_line.filter(has_text=re.compile(r"^\s*optimizer_cfg:\s*$")).first.wait_for()
            editor_line.filter(has_text=re.compile(r"^\s*lr: 0\.001\s*$")).first.wait_for()
            page.screenshot(path=str(artifacts_dir / "launchpad-defaults.png"))

            # A wrong type: the editor shows the error and the launch button stays disabled.
            _type_config(page, _run_config("fast"))
            error = page.get_by_text(re.compile(r"optimizer_cfg:lr.*fast|fast.*optimizer_cfg:lr"))
            error.first.wait_for()
            page.screenshot(path=str(artifacts_dir / "launchpad-bad-lr.png"))
            button = _launch_button(page)
            assert button.is_disabled(), "the launch button is enabled with lr: 'fast'"
            button.click(force=True)  # what a user's click does: nothing
            time.sleep(NO_RUN_WATCH_S)
            assert instance.get_runs() == [], "a run was launched with lr: 'fast'"

            # The new value: no errors, launch, and the run trains with it.
            _type_config(page, _run_config(NEW_LR))
            page.get_by_text("No errors", exact=True).first.wait_for()
            wait_for(button.is_enabled, timeout_s=60, what="the launch button to enable")
            page.screenshot(path=str(artifacts_dir / "launchpad-lr.png"))
            button.click()

            def launched():
                dev.check_alive()
                return instance.get_runs(limit=1)

            (run,) = wait_for(launched, timeout_s=120, what="a run launched from the launchpad")
            assert run.job_name == JOB
            assert run.run_config["ops"][TRAIN_OP]["config"]["exp"]["optimizer_cfg"]["lr"] == NEW_LR

            def finished():
                dev.check_alive()
                current = instance.get_run_by_id(run.run_id)
                return current if current.is_finished else None

            done = wait_for(
                finished,
                timeout_s=420,
                interval_s=3,
                what=f"run {run.run_id} to finish",
                context=dev.tail,
            )
            assert done.status == dg.DagsterRunStatus.SUCCESS, (
                f"run {run.run_id} ended {done.status.value}:\n"
                f"{run_failure_report(instance, run.run_id)}\n{dev.tail()}"
            )
            trained = instance.get_latest_materialization_event(
                dg.AssetKey(["mnist", "trained_model"])
            )
            assert trained is not None and trained.run_id == run.run_id
            effective = trained.asset_materialization.metadata["effective_config"].value
            assert effective["optimizer_cfg"]["lr"] == NEW_LR, effective["optimizer_cfg"]
            page.screenshot(path=str(artifacts_dir / "launchpad-run.png"))
        finally:
            browser.close()
    ui_s = time.monotonic() - started

    # The CLI refuses the same wrong type before any step.
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_run_config("fast")))
    with deployment.instance() as instance:
        before = {r.run_id for r in instance.get_runs()}
    result = run_cli(
        dagster_cmd("job", "execute", "-m", MODULE, "-j", JOB, "-c", str(bad)),
        deployment.env,
        timeout_s=180,
        log_path=deployment.logs / "job-execute-bad.log",
    )
    assert result.returncode != 0, f"`dagster job execute` accepted lr: 'fast':\n{result.stdout}"
    assert re.search(r"optimizer_cfg:lr", result.stdout) and "fast" in result.stdout, (
        f"the error does not name lr and its value:\n{result.stdout[-4000:]}"
    )
    with deployment.instance() as instance:
        new = [r for r in instance.get_runs() if r.run_id not in before]
        started_steps = {r.run_id: _step_starts(instance, r.run_id) for r in new}
    assert not any(started_steps.values()), f"steps started with lr: 'fast': {started_steps}"
    print(f"launchpad path: UI {ui_s:.0f} s, total {time.monotonic() - started:.0f} s")
