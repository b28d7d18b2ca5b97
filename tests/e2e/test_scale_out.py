"""The scale-out configuration on one machine: Dagster state in Postgres
(`deploy/postgres/dagster.yaml`), training on a Ray head started separately, progress in a
Redis reached by URL; the webserver and the daemon read the same Postgres."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import E2EDeployment
from tests.e2e.helpers import REPO_ROOT, dagster_cmd, dagster_dev, graphql, run_cli, wait_for
from tests.e2e.services import dagster_postgres_url, postgres_database, ray_head

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

POSTGRES_ENV = "TINYEXP_TEST_POSTGRES_URL"
DEPLOY_CONFIG = REPO_ROOT / "deploy" / "postgres" / "dagster.yaml"
PIPELINE = ["prepared_dataset", "trained_model", "model_checkpoint", "model_evaluation"]
QUICK = {"ops": {"mnist__trained_model": {"config": {"overrides": ["train_cfg.num_epochs=1"]}}}}
RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId status jobName } } } }"


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"{POSTGRES_ENV} is unset: set it to a PostgreSQL server URL allowed to create "
            "databases, e.g. postgresql://postgres@127.0.0.1:5432/test"
        )
    return url


def _query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of one query on the deployment's database (read straight from Postgres)."""
    import psycopg2

    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


@pytest.mark.timeout(600)
def test_pipeline_on_postgres_ray_head_and_redis_url(
    deployment: E2EDeployment, postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """`dagster job execute` records its run in Postgres and trains on the external Ray
    head; `dagster dev` on the same DAGSTER_HOME sees that run and its daemon heartbeats
    land in the same database."""
    from tinyexp_core.progress import read_run
    from tinyexp_core.services.redis_client import make_client

    shutil.copyfile(DEPLOY_CONFIG, deployment.home / "dagster.yaml")
    quick = tmp_path / "quick.yaml"
    quick.write_text(yaml.safe_dump(QUICK))

    with (
        postgres_database(postgres_url) as database_url,
        ray_head(deployment.env, deployment.logs / "ray-head.log") as head,
    ):
        env = {
            **deployment.env,
            **head.driver_env,
            "DAGSTER_POSTGRES_URL": dagster_postgres_url(database_url),
        }
        started = time.time()
        command = (
            f"job execute -m tinyexp_dagster.definitions -j mnist_training_pipeline -c {quick}"
        )
        result = run_cli(
            dagster_cmd(*command.split()),
            env,
            log_path=deployment.logs / "job-execute.log",
        )
        assert result.returncode == 0, result.stdout[-6000:]

        # Dagster state went to Postgres, nowhere else.
        runs = _query(database_url, "SELECT run_id, status, pipeline_name FROM runs")
        assert len(runs) == 1 and runs[0][1:] == ("SUCCESS", "mnist_training_pipeline"), runs
        run_id = runs[0][0]
        materialized = _query(
            database_url,
            "SELECT DISTINCT asset_key FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = %s",
            (run_id,),
        )
        assert sorted(json.loads(key)[-1] for (key,) in materialized) == sorted(PIPELINE)
        assert not list(deployment.home.glob("**/*.db")), "SQLite storage was created"

        # The training ran on the head: its logs hold the run process's Ray driver and the
        # rank actors, and the run process started no Ray of its own under /tmp/ray.
        rows = _query(
            database_url,
            "SELECT DISTINCT event::json->'dagster_event'->>'pid' FROM event_logs "
            "WHERE run_id = %s AND dagster_event_type = 'STEP_START'",
            (run_id,),
        )
        pids = {pid for (pid,) in rows if pid}
        drivers = [p for pid in pids for p in head.logs_dir.glob(f"python-core-driver-*_{pid}.log")]
        assert drivers, f"no Ray driver of the run process ({pids}) in {head.logs_dir}"
        rank_logs = [
            p for p in head.logs_dir.glob("worker-*.out") if "_RankWorker" in p.read_text()
        ]
        assert len(rank_logs) >= 2, f"rank actors did not run on the head ({head.logs_dir})"
        local = [p for pid in pids for p in Path("/tmp/ray").glob(f"session_*_{pid}")]
        assert not local, f"the run started a local Ray: {local}"

        # Progress reached the Redis named by URL.
        progress = read_run(make_client(redis_url), run_id)
        assert progress.get("status") == "succeeded", progress
        assert float(progress.get("heartbeat", 0)) >= started - 5, progress

        # Webserver and daemon share the instance: the UI's API lists the CLI's run and the
        # daemon's heartbeats are rows in the same database.
        with dagster_dev(env, deployment.logs / "dagster-dev.log") as (dev, port):
            listed = graphql(port, RUNS_QUERY)["runsOrError"]["results"]
            assert [(r["runId"], r["status"]) for r in listed] == [(run_id, "SUCCESS")]

            def heartbeats():
                dev.check_alive()
                rows = _query(database_url, "SELECT daemon_type FROM daemon_heartbeats")
                return {"SENSOR", "SCHEDULER"} <= {kind for (kind,) in rows}

            wait_for(
                heartbeats,
                timeout_s=120,
                what="sensor and scheduler daemon heartbeats in Postgres",
                context=dev.tail,
            )
