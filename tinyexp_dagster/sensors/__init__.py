"""Sensors: live training progress from Redis, stalled runs, and retraining triggers.

- `training_progress_sensor` (RUNNING): Redis progress events -> `AssetObservation`s on
  `trained_model`;
- `stalled_training_sensor` (RUNNING): active runs without a recent heartbeat -> `stalled`,
  optionally terminated and resumed;
- `retrain_on_new_data_sensor` (RUNNING): a new `prepared_dataset` data version ->
  `retrain_job`;
- `accuracy_regression_sensor` (STOPPED): a `model_evaluation` below the minimum accuracy ->
  `retrain_job`.

One module per sensor; `common` holds what they share (asset keys, settings, store access).
The two Redis sensors keep their own cursor (a stream id; the stalls reported); the two that
react to one asset's materializations are Dagster asset sensors, whose cursor is Dagster's.

The first three are on by default so that `make dev` shows live progress and reacts to new
data without clicks; their only side effects are cheap (observations, a status field) or
asked for (a new data version). The accuracy sensor starts stopped: retraining an unchanged
config on unchanged data rarely lifts accuracy, so turning it on is a deliberate choice.

Environment, read at every evaluation (invalid values fail the tick, naming the variable):
`TINYEXP_STALL_AFTER_S` (600), `TINYEXP_STALL_ACTION` (`report` | `terminate`),
`TINYEXP_MIN_ACCURACY` (0.9).

Redis being unreachable is reported as such (a `SkipReason` naming the redacted URL) and
never as a stall; with no URL configured and no embedded server started yet there is no
progress store, which is also a `SkipReason`. Rejected credentials raise: that is a
configuration error, not an outage.
"""

from .accuracy_regression import accuracy_regression_sensor
from .common import min_accuracy, stall_action, stall_after_s
from .retrain_on_new_data import data_version, retrain_on_new_data_sensor
from .stalled_training import STALLED_RUN_TAG, resume_run_config, stalled_training_sensor
from .training_progress import MAX_EVENTS_PER_TICK, progress_observation, training_progress_sensor

SENSORS = [
    training_progress_sensor,
    stalled_training_sensor,
    retrain_on_new_data_sensor,
    accuracy_regression_sensor,
]

__all__ = [
    "MAX_EVENTS_PER_TICK",
    "SENSORS",
    "STALLED_RUN_TAG",
    "accuracy_regression_sensor",
    "data_version",
    "min_accuracy",
    "progress_observation",
    "resume_run_config",
    "retrain_on_new_data_sensor",
    "stall_action",
    "stall_after_s",
    "stalled_training_sensor",
    "training_progress_sensor",
]
