"""Sensors: live training progress from Redis, stalled runs, and retraining triggers.

Shared by every pipeline (they read the progress store, whose hashes name each run's asset
key; `SHARED_SENSORS`, included once however many pipelines merge):
- `training_progress_sensor` (RUNNING): Redis progress events -> `AssetObservation`s on the
  run's `<name>/trained_model`;
- `stalled_training_sensor` (RUNNING): active runs without a recent heartbeat -> `stalled`,
  optionally terminated and resumed (a run of the stalled pipeline's retraining assets).

One per pipeline (built by `pipeline_defs`):
- `<name>_retrain_on_new_data_sensor` (RUNNING): a new `<name>/prepared_dataset` data
  version -> `<name>_retrain_job`;
- `<name>_metric_regression_sensor` (STOPPED): a `<name>/model_evaluation` whose primary
  metric fails the pipeline's threshold -> `<name>_retrain_job`.

One module per sensor; `common` holds what they share (settings, store access).
The two Redis sensors keep their own cursor (a stream id; the stalls reported); the two that
react to one asset's materializations are Dagster asset sensors, whose cursor is Dagster's.

Settings are resources, chosen once per deployment: the stall sensor's are
the `stalls` resource (`StallSettingsResource`: `after_s` 600, `action` `report` |
`terminate`; `default_resources()` reads `TINYEXP_STALL_AFTER_S` / `TINYEXP_STALL_ACTION`).

Redis being unreachable is reported as such (a `SkipReason` naming the redacted URL) and
never as a stall; with no URL configured and no embedded server started yet there is no
progress store, which is also a `SkipReason`. Rejected credentials raise: that is a
configuration error, not an outage.
"""

from tinyexp_dagster.sensors.metric_regression import build_metric_regression_sensor, evaluation_key
from tinyexp_dagster.sensors.retrain_on_new_data import (
    build_retrain_on_new_data_sensor,
    data_version,
)
from tinyexp_dagster.sensors.stalled_training import (
    STALLED_AT_TAG,
    STALLED_RUN_TAG,
    resume_run_config,
    stalled_training_sensor,
)
from tinyexp_dagster.sensors.training_progress import (
    MAX_EVENTS_PER_TICK,
    MAX_OBSERVATIONS_PER_TICK,
    progress_observation,
    training_progress_sensor,
)

SHARED_SENSORS = [training_progress_sensor, stalled_training_sensor]

__all__ = [
    "MAX_EVENTS_PER_TICK",
    "SHARED_SENSORS",
    "STALLED_AT_TAG",
    "STALLED_RUN_TAG",
    "build_metric_regression_sensor",
    "build_retrain_on_new_data_sensor",
    "data_version",
    "evaluation_key",
    "MAX_OBSERVATIONS_PER_TICK",
    "progress_observation",
    "resume_run_config",
    "stalled_training_sensor",
    "training_progress_sensor",
]
