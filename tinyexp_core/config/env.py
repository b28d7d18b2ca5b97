"""Names of the environment variables through which an orchestrator hands a run its
identity and its stores.

A URL may hold a password, so it never travels in the config. Config values never travel
this way: an orchestrator passes them as overrides, so the run record (config.yaml,
checkpoints) states what ran. Plain strings with no imports, so a reader (the progress
store, a data loader, the Dagster layer) can name them without importing the experiment.
"""

from __future__ import annotations

__all__ = [
    "ENV_ASSET",
    "ENV_ATTEMPT",
    "ENV_CACHE_URL",
    "ENV_PROGRESS_RUN_ID",
    "ENV_PROGRESS_URL",
]

ENV_PROGRESS_URL = "TINYEXP_PROGRESS_URL"
ENV_ASSET = "TINYEXP_ASSET"
# Progress key of the run; an orchestrator sets it to its own run id (Dagster's), which
# differs from `run_id` when retries share one run directory.
ENV_PROGRESS_RUN_ID = "TINYEXP_PROGRESS_RUN_ID"
ENV_ATTEMPT = "TINYEXP_ATTEMPT"  # the orchestrator's attempt number of this run (1-based)
ENV_CACHE_URL = "TINYEXP_CACHE_URL"  # a Redis for cached samples (else the progress store's)
