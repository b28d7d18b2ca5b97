"""Old import path of the embedded Redis's idle watcher and holders, kept for outside code:
they now live in `tinyexp_core.services.redis_idle`."""

from __future__ import annotations

from tinyexp_core.services.redis_idle import (
    WATCHER_NAME,
    Holder,
    add_holder,
    main,
    read_holders,
    watch,
)

__all__ = ["WATCHER_NAME", "Holder", "add_holder", "main", "read_holders", "watch"]

if __name__ == "__main__":
    raise SystemExit(main())
