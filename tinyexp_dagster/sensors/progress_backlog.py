"""The progress sensor's backlog: what it read from the event stream but has not observed yet.

A tick reads every new event (in batches, within `READ_BUDGET_S`) and keeps, per run, only
what the asset page shows: the newest epoch end (earlier ones are folded into it and
counted) and the outcome. Those slots wait here, oldest first, until a tick emits them
(at most `MAX_OBSERVATIONS_PER_TICK` per tick, so the daemon's writes stay bounded). The
backlog holds at most two slots per run, however many events the runs write, so at 1000
active runs it stays at 2000 slots at most and empties in `ceil(slots / cap)` ticks once the
runs slow down; the stream cursor itself is never behind by more than one read budget.

It lives in the sensor's cursor: a bare stream id when nothing waits (the cursor the
sensor always had), else JSON `{"stream": id, "pending": [[run_id, kind, event_id,
folded], ...]}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

EPOCH, OUTCOME = "epoch", "outcome"


@dataclass
class Backlog:
    """The last stream id read, and the slots waiting to be observed (oldest first)."""

    stream: str
    pending: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str) -> Backlog:
        if not cursor.startswith("{"):
            return cls(cursor)
        data = json.loads(cursor)
        pending = {(run, kind): (event_id, int(folded)) for run, kind, event_id, folded in
                   data["pending"]}  # fmt: skip
        return cls(str(data["stream"]), pending)

    def dump(self) -> str:
        if not self.pending:
            return self.stream
        rows = [[run, kind, event_id, folded] for (run, kind), (event_id, folded) in
                self.pending.items()]  # fmt: skip
        return json.dumps({"stream": self.stream, "pending": rows}, separators=(",", ":"))

    def add(self, run_id: str, kind: str, event_id: str) -> None:
        """A run's newer epoch end replaces the waiting one (and counts it as folded in);
        a slot keeps its place in the queue, so a busy run is not starved."""
        key = (run_id, kind)
        if key in self.pending and kind == EPOCH:
            _, folded = self.pending[key]
            self.pending[key] = (event_id, folded + 1)
        else:
            self.pending[key] = (event_id, 0)

    def take(self, n: int) -> list[tuple[str, str, str, int]]:
        """The `n` oldest slots, removed: (run_id, kind, event_id, folded)."""
        keys = list(self.pending)[:n]
        return [(run, kind, *self.pending.pop((run, kind))) for run, kind in keys]
