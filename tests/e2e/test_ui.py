"""The UI path: `dagster dev`, the asset graph in a real (headless) Chromium, one click on
"Materialize all", and the four assets materialized in the Dagster instance."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM_ARGS, E2EDeployment
from tests.e2e.helpers import REPO_ROOT, dagster_dev, run_failure_report, wait_for

pytestmark = pytest.mark.e2e

PIPELINE = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
README_IMAGE = REPO_ROOT / "docs" / "images" / "asset-graph.png"  # rewritten by every run
# Wide enough that the graph fits at a zoom where nodes show their details, short enough
# that the README image is mostly graph.
GRAPH_VIEWPORT = {"width": 1600, "height": 640}
ASSET_PAGE_VIEWPORT = {"width": 1600, "height": 1000}
UI_TIMEOUT_MS = 120_000  # the first page load compiles nothing, but a loaded 2-core box is slow


def _dismiss_community_dialog(page) -> None:
    """Dagster's first-visit "Join the Dagster community" dialog covers the page: skip it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=5_000)
    except PlaywrightTimeout:
        return
    skip.click()
    skip.wait_for(state="hidden", timeout=10_000)


def _confirm_launchpad_if_shown(page) -> bool:
    """A launchpad opens only when the selection needs config; confirm it with its button."""
    dialog = page.get_by_role("dialog")
    if dialog.count() == 0 or not dialog.first.is_visible():
        return False
    button = dialog.first.get_by_role("button", name=re.compile(r"^(Launch run|Materialize)"))
    if button.count() == 0:
        return False
    button.first.click()
    return True


def _open_graph(page, base: str, status: str) -> None:
    """The global asset lineage, once all four nodes show `status` (their details are
    fetched after the nodes are drawn, so a node without them is still loading)."""
    page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
    page.get_by_role("button", name="Materialize all").wait_for(timeout=UI_TIMEOUT_MS)
    _dismiss_community_dialog(page)
    labels = page.get_by_text(status, exact=True).filter(visible=True)
    labels.nth(len(PIPELINE) - 1).wait_for(timeout=UI_TIMEOUT_MS)


def _graph_screenshot(page, base: str, path: Path) -> None:
    """The materialized graph with the navigation folded away (the UI remembers that), so the
    graph, re-fitted on reload, gets the width."""
    hide_nav = page.get_by_role("button", name="Hide navigation")
    if hide_nav.count() and hide_nav.first.is_visible():
        hide_nav.first.click()
    _open_graph(page, base, "Materialized")
    page.screenshot(path=str(path))


@pytest.mark.timeout(600)
def test_materialize_all_from_the_asset_graph(
    deployment: E2EDeployment, artifacts_dir: Path, chromium_executable: str
) -> None:
    """Click "Materialize all" in the UI; one run materializes the four assets."""
    import dagster as dg
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    with (
        dagster_dev(deployment.env, deployment.logs / "dagster-dev.log") as (dev, port),
        deployment.instance() as instance,
        sync_playwright() as pw,
    ):
        base = f"http://127.0.0.1:{port}"
        browser = pw.chromium.launch(executable_path=chromium_executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=GRAPH_VIEWPORT)
            page.set_default_timeout(UI_TIMEOUT_MS)
            _open_graph(page, base, "Never materialized")
            page.screenshot(path=str(artifacts_dir / "asset-graph-before.png"))
            assert instance.get_runs() == [], "a fresh instance should have no runs"

            page.get_by_role("button", name="Materialize all").click()

            def launched():
                dev.check_alive()
                _confirm_launchpad_if_shown(page)
                return instance.get_runs(limit=1)

            (run,) = wait_for(
                launched, timeout_s=120, what="a run launched from the UI", context=dev.tail
            )
            assert set(run.asset_selection or ()) == {
                dg.AssetKey(["mnist", a]) for a in PIPELINE
            }, f"the UI launched a run for {run.asset_selection}, not the whole pipeline"

            def finished():
                dev.check_alive()
                current = instance.get_run_by_id(run.run_id)
                return current if current.is_finished else None

            done = wait_for(
                finished,
                timeout_s=480,
                interval_s=3,
                what=f"run {run.run_id} to finish",
                context=dev.tail,
            )
            assert done.status == dg.DagsterRunStatus.SUCCESS, (
                f"run {run.run_id} ended {done.status.value}:\n"
                f"{run_failure_report(instance, run.run_id)}\n{dev.tail()}"
            )
            for asset in PIPELINE:
                event = instance.get_latest_materialization_event(dg.AssetKey(["mnist", asset]))
                assert event is not None, f"{asset} has no materialization in the instance"
                assert event.run_id == run.run_id, f"{asset} was materialized by another run"
            trained = instance.get_latest_materialization_event(
                dg.AssetKey(["mnist", "trained_model"])
            )
            metadata = trained.asset_materialization.metadata
            assert metadata["workers"].value == 2 and metadata["epochs"].value >= 1

            _open_graph(page, base, "Materialized")
            graph_png = artifacts_dir / "asset-graph.png"
            _graph_screenshot(page, base, graph_png)

            page.set_viewport_size(ASSET_PAGE_VIEWPORT)
            page.goto(f"{base}/assets/mnist/trained_model", wait_until="domcontentloaded")
            page.get_by_text("best_val_accuracy", exact=True).first.wait_for()
            page.get_by_text("per_epoch", exact=True).first.wait_for()
            page.screenshot(path=str(artifacts_dir / "trained_model.png"))
        finally:
            browser.close()

    # The README shows the graph as this run drew it: the picture follows the product.
    README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(graph_png, README_IMAGE)
    print(f"UI path: {time.monotonic() - started:.0f} s, screenshots in {artifacts_dir}")
