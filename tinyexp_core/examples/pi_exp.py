"""Distributed Monte Carlo estimate of pi: every rank samples, the hits are all-reduced.

`python -m tinyexp_core.examples.pi_exp launcher=ray num_workers=2 num_samples=2000000`
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from tinyexp_core.accelerators import AcceleratorCfg
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.lazy import lazy_module

torch = lazy_module("torch")  # loaded when the run starts, not on import


@dataclass(repr=False)
class Exp(TinyExp):
    """No data, no model: a check that ranks, seeds and collectives are wired right."""

    exp_name: str = "pi_exp"
    num_workers: int = 2
    num_samples: int = 1_000_000  # per rank
    chunk_size: int = 100_000  # samples drawn per iteration, bounds memory

    accelerator_cfg: AcceleratorCfg = field(default_factory=lambda: AcceleratorCfg("cpu"))

    def validate(self) -> None:
        super().validate()
        if self.num_samples < 1:
            raise ConfigValueError("num_samples", self.num_samples, "an integer >= 1")
        if self.chunk_size < 1:
            raise ConfigValueError("chunk_size", self.chunk_size, "an integer >= 1")

    def train(self) -> dict[str, Any]:
        acc = self.accelerator_cfg.build_accelerator()
        try:
            # Rank 0's lines also reach the launcher's caller (the Dagster step log).
            logger = self.logger_cfg.build_logger(None, distributed_rank=acc.rank)
            started = time.perf_counter()
            # Distinct streams per rank: the same seed everywhere would repeat the samples.
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + acc.rank)
            hits = 0
            left = self.num_samples
            while left > 0:
                n = min(left, self.chunk_size)
                xy = torch.rand(n, 2, generator=gen, dtype=torch.float64)
                hits += int((xy.square().sum(1) <= 1.0).sum())
                left -= n
            totals = acc.reduce_sum(torch.tensor([hits, self.num_samples], dtype=torch.float64))
            estimate = 4.0 * float(totals[0]) / float(totals[1])
            result = {
                "pi": estimate,
                "error": abs(estimate - math.pi),
                "num_samples": int(totals[1]),
                "world_size": acc.world_size,
                "rank_hits": acc.gather(torch.tensor([hits], dtype=torch.float64)).tolist(),
                "wall_time_s": time.perf_counter() - started,
            }
            logger.info(f"pi ~= {estimate:.6f} from {result['num_samples']} samples")
            return result
        finally:
            acc.destroy()


if __name__ == "__main__":
    from tinyexp_core.cli import store_and_run_exp

    store_and_run_exp(Exp)
