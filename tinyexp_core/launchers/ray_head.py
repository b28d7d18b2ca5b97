"""Old import path of the local Ray that outlives runs, kept for outside code: it now lives in
`tinyexp_core.services.ray_head`."""

from __future__ import annotations

from tinyexp_core.services.ray_head import (
    ADDRESS_FILE,
    CLAIM_FILE,
    ENV_IDLE_STOP_S,
    HEAD_DIR,
    HELD_FILE,
    LOG_FILE,
    START_TIMEOUT_S,
    STARTING_FILE,
    STOP_TIMEOUT_S,
    RayHead,
    address_file,
    claim,
    ensure_head,
    head_dir,
    idle_stop_s,
    live_head_address,
    main,
    read_head,
    serve,
    spawn_head,
    start_head,
    stop_head,
    wait_head,
    why_not_live,
)

__all__ = [
    "ADDRESS_FILE",
    "CLAIM_FILE",
    "ENV_IDLE_STOP_S",
    "HEAD_DIR",
    "HELD_FILE",
    "LOG_FILE",
    "STARTING_FILE",
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "RayHead",
    "address_file",
    "claim",
    "ensure_head",
    "head_dir",
    "idle_stop_s",
    "live_head_address",
    "main",
    "read_head",
    "serve",
    "spawn_head",
    "start_head",
    "stop_head",
    "wait_head",
    "why_not_live",
]

if __name__ == "__main__":
    raise SystemExit(main())
