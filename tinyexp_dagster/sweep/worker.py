"""A sweep's trial worker: one long-lived process that trains trials one after another.

    python -m tinyexp_dagster.sweep.worker --location JSON --job NAME_training_pipeline \
        --requests-fd R --results-fd W

It imports Dagster, loads the code location and joins Ray once (`kept_connection`: the Ray
connection of its first trial serves the next ones); each trial is then one `execute_job` of
the training job with the trial's tags, in the main thread, as `dagster job execute` runs it
(interrupts captured, the instance of DAGSTER_HOME): Dagster records each trial as its own
run of that job, as before. The sweep command (`worker_pool`) sends a trial as a JSON line
on the requests pipe and reads its result as a JSON line on the results pipe, never on
stdout/stderr: fds 1 and 2 point at the trial's log while it runs.

A run that fails is a result like any other; the worker takes the next trial. A terminal
stop (the sweep command's one SIGINT) ends the trial's run CANCELED, then the worker exits
130 as `dagster job execute` does, its last line (`continue with: ...`) in the trial's log.
An end of the requests pipe (the sweep is over, or the command is gone) ends the worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Serve trials until the requests pipe ends or a trial was stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--location", required=True, help="the CodeLocation's fields, JSON")
    parser.add_argument("--job", required=True, help="the training job's name")
    parser.add_argument("--requests-fd", type=int, required=True)
    parser.add_argument("--results-fd", type=int, required=True)
    args = parser.parse_args(argv)
    requests = os.fdopen(args.requests_fd, "r", encoding="utf-8")
    results = os.fdopen(args.results_fd, "w", encoding="utf-8")
    try:
        return _serve(args.location, args.job, requests, results)
    except KeyboardInterrupt:  # a SIGINT between trials: nothing runs, nothing to stop
        return EXIT_INTERRUPTED
    finally:
        requests.close()
        with contextlib.suppress(OSError):  # the sweep command may be gone
            results.close()


def _serve(location_json: str, job: str, requests: Any, results: Any) -> int:
    import dagster as dg

    from tinyexp_core.launchers.ray_session import kept_connection
    from tinyexp_dagster.cli_location import CodeLocation

    location = CodeLocation(**json.loads(location_json))
    recon_job = location.repository().get_reconstructable_job(job)
    with kept_connection(), dg.DagsterInstance.get() as instance:
        for line in requests:
            request = json.loads(line)
            result, stopped = run_trial(instance, recon_job, request)
            results.write(json.dumps(result) + "\n")
            results.flush()
            if stopped:  # as `dagster job execute` after a stop: no further trial
                break
    return 0


def run_trial(instance: Any, recon_job: Any, request: dict[str, Any]) -> tuple[dict, bool]:
    """One trial: its run, output in its log; (its result, whether it was stopped here)."""
    from dagster._utils.interrupts import capture_interrupts, check_captured_interrupt

    from tinyexp_dagster.terminal_stop import pending_exit

    started = time.time()
    run_id, status, error = "", "", ""
    stopped = False
    with _output_to(request["log"], keep=lambda: stopped):
        with capture_interrupts():  # per trial: an interrupt's flag is one run's
            try:
                run_id, status = _execute(instance, recon_job, request["tags"])
            except Exception as err:  # the run could not be made (its tags, the instance)
                traceback.print_exc()
                error = f"{type(err).__name__}: {err}"
            stopped = check_captured_interrupt() or pending_exit() is not None
    result = {"key": request["key"], "run_id": run_id, "status": status, "error": error}
    return {**result, "started": started, "ended": time.time()}, stopped


def _execute(instance: Any, recon_job: Any, tags: dict[str, str]) -> tuple[str, str]:
    """The job's run with these tags, as `dagster job execute --tags` runs it: (its id,
    its status when it ended)."""
    import dagster as dg

    with dg.execute_job(recon_job, instance, tags=tags, raise_on_error=False) as result:
        run_id = result.run_id
    run = instance.get_run_by_id(run_id)
    return run_id, run.status.value if run is not None else ""


@contextlib.contextmanager
def _output_to(log: str, keep: Any) -> Iterator[None]:
    """fds 1 and 2 to the trial's log (truncated) while the trial runs; back to the
    worker's own output after it, unless `keep()`: a stopped trial's worker exits with
    its last words in that log."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "wb") as file:
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        if not keep():
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


if __name__ == "__main__":
    sys.exit(main())
