"""Tabular regression: an MLP on scikit-learn's bundled diabetes data (the "your model" template).

Run it: `python -m tinyexp_core.examples.tabular_exp train_cfg.num_epochs=5`, with DDP on
Ray: `... launcher=ray num_workers=2`; `mode=help` prints every key. The data ships with
scikit-learn (442 patients, 10 features, disease progression after one year), so it runs
offline. The primary metric is `rmse` on the target's own units; lower is better.

What a pipeline needs from an experiment, all here: `prepare_data(storage_root)` ->
PreparedData, `train()` -> TrainResult, `evaluate(checkpoint_path, split)` -> EvalResult,
and `primary_metric`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.accelerators import AcceleratorCfg
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.contract import EvalResult, PreparedData, PrimaryMetric, TrainResult
from tinyexp_core.lazy import lazy_module
from tinyexp_core.training import TrainingSession

# torch loads when training starts, not when the class is imported (Dagster imports it to
# build the launchpad's config schema).
torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")


@dataclass(repr=False)
class Exp(TinyExp):
    """Regression with DDP: diabetes progression from 10 clinical features."""

    primary_metric: ClassVar[PrimaryMetric] = PrimaryMetric("rmse", "min")

    exp_name: str = "tabular_exp"
    num_workers: int = 2  # used with launcher=ray

    @dataclass
    class DataCfg:
        """The diabetes table and its split; features are standardized on the train split."""

        prepared_path: str = ""  # a prepared dataset dir; empty: prepare under data_root
        data_root: str = "./data"  # where prepared datasets are written
        val_fraction: float = 0.15
        test_fraction: float = 0.2
        split_seed: int = 0  # the split depends on this seed only, not on the training seed
        batch_size: int = 32  # per rank

        def validate(self) -> None:
            if self.batch_size < 1:
                raise ConfigValueError("batch_size", self.batch_size, "an integer >= 1")
            for name in ("val_fraction", "test_fraction"):
                if not 0.0 < getattr(self, name) < 0.5:
                    raise ConfigValueError(name, getattr(self, name), "a fraction in (0, 0.5)")

        def build_prepared_dataset(self, out_root: str) -> PreparedData:
            """Load the bundled table and write the prepared splits (idempotent)."""
            from sklearn.datasets import load_diabetes

            from tinyexp_core.data.tabular import prepare_tabular

            table = load_diabetes(scaled=False)  # raw units; standardized on train below
            return prepare_tabular(
                torch.as_tensor(table.data, dtype=torch.float64),
                torch.as_tensor(table.target, dtype=torch.float64),
                out_root,
                source="diabetes",
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                seed=self.split_seed,
                feature_names=list(table.feature_names),
            )

    @dataclass
    class ModuleCfg:
        """The MLP."""

        hidden_sizes: list[int] = field(default_factory=lambda: [64, 32])  # input side first
        dropout: float = 0.1

        def validate(self) -> None:
            if not self.hidden_sizes or min(self.hidden_sizes) < 1:
                allowed = "at least one width, every width >= 1"
                raise ConfigValueError("hidden_sizes", self.hidden_sizes, allowed)
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigValueError("dropout", self.dropout, "a probability in [0, 1)")

        def build_module(self, num_features: int) -> torch.nn.Module:
            from tinyexp_core.examples.nets import MLP

            return MLP(num_features, list(self.hidden_sizes), self.dropout)

    @dataclass
    class OptimizerCfg:
        """AdamW; `lr` is for the whole (global) batch."""

        lr: float = 3e-3
        weight_decay: float = 1e-4  # decoupled (AdamW)

        def validate(self) -> None:
            if not (self.lr > 0 and math.isfinite(self.lr)):
                raise ConfigValueError("lr", self.lr, "a finite number > 0")
            if self.weight_decay < 0:
                raise ConfigValueError("weight_decay", self.weight_decay, "a number >= 0")

        def build_optimizer(self, params: Any) -> torch.optim.Optimizer:
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    @dataclass
    class TrainCfg:
        """How long to train."""

        num_epochs: int = 20
        num_threads: int = 1  # torch CPU threads per rank; 0: torch's default

        def validate(self) -> None:
            if self.num_epochs < 1:
                raise ConfigValueError("num_epochs", self.num_epochs, "an integer >= 1")
            if self.num_threads < 0:
                raise ConfigValueError("num_threads", self.num_threads, "an integer >= 0")

    accelerator_cfg: AcceleratorCfg = field(default_factory=AcceleratorCfg)
    data_cfg: DataCfg = field(default_factory=DataCfg)
    module_cfg: ModuleCfg = field(default_factory=ModuleCfg)
    optimizer_cfg: OptimizerCfg = field(default_factory=OptimizerCfg)
    train_cfg: TrainCfg = field(default_factory=TrainCfg)

    # ------------------------------------------------------------------ data
    def prepare_data(self, storage_root: str) -> PreparedData:
        """Prepare the table under `<storage_root>/datasets`; returns its manifest."""
        return self.data_cfg.build_prepared_dataset(os.path.join(storage_root, "datasets"))

    def _prepared(self) -> PreparedData:
        """The prepared dataset: `prepared_path`, else prepared now under `data_root`."""
        from tinyexp_core.data.tabular import read_tabular_manifest

        if not self.data_cfg.prepared_path:
            prepared = self.data_cfg.build_prepared_dataset(self.data_cfg.data_root)
            self.data_cfg.prepared_path = prepared.path
        return read_tabular_manifest(self.data_cfg.prepared_path)

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        """Train on every rank; returns the run (rank 0's view)."""
        if self.train_cfg.num_threads:
            # Threads only pay off for large kernels; on a 32 x 64 matmul they wait on each other.
            torch.set_num_threads(self.train_cfg.num_threads)
        from tinyexp_core.data.tabular import load_tabular_split

        with TrainingSession(self) as session:
            data = session.main_process_first(self._prepared)  # rank 0 prepares, others wait
            mean, std = data.params["target_mean"], data.params["target_std"]
            loader = self._loader(data, session.accelerator)
            x_val, y_val = load_tabular_split(data.path, "val")
            x_val, y_val = (
                x_val[session.rank :: session.world_size],
                y_val[session.rank :: session.world_size],
            )
            torch.manual_seed(self.seed)  # the same initial weights on every rank
            model = self.module_cfg.build_module(data.shape[0])
            optimizer = self.optimizer_cfg.build_optimizer(model.parameters())
            # What every checkpoint holds; resumes from `resume_from` (mid-epoch too).
            model = session.setup(
                model, optimizer, num_epochs=self.train_cfg.num_epochs, num_steps=len(loader)
            )
            for _epoch in session.epochs():
                model.train()
                for x, y in session.batches(loader):
                    x, y = x.to(session.device), y.to(session.device)
                    with session.autocast():
                        loss = F.mse_loss(model(x).float(), y)  # on standardized targets
                    optimizer.zero_grad(set_to_none=True)
                    session.backward(loss)
                    optimizer.step()
                    session.step(loss, len(y))  # progress, stop requests, step checkpoints
                model.eval()
                sums = self._error_sums(model, x_val, y_val, mean, std, session.device)
                val = self._metrics(session.accelerator.reduce_sum(sums))
                metrics = {"rmse": val["rmse"], "mae": val["mae"]}
                session.end_epoch(val_loss=val["loss"], metrics=metrics)
            return session.result()

    def _loader(self, data: PreparedData, acc: Any) -> torch.utils.data.DataLoader:
        """This rank's shuffled shard of the train split, targets standardized."""
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        from tinyexp_core.data.tabular import load_tabular_split

        x, y = load_tabular_split(data.path, "train")
        mean, std = data.params["target_mean"], data.params["target_std"]
        train_set = TensorDataset(x, (y - mean) / std)
        # DistributedSampler pads so every rank sees as many batches: unequal counts hang DDP
        sampler = DistributedSampler(
            train_set, num_replicas=acc.world_size, rank=acc.rank, shuffle=True, seed=self.seed
        )
        # Its own generator: iterating a DataLoader draws a seed from the global RNG
        # otherwise, which a run resumed mid-epoch (RNG restored after that draw) would
        # draw again, shifting every dropout mask after it.
        return DataLoader(
            train_set,
            batch_size=self.data_cfg.batch_size,
            sampler=sampler,
            generator=torch.Generator(),
        )

    @staticmethod
    def _error_sums(model, x, y, target_mean, target_std, device) -> torch.Tensor:
        """Sums over these rows: squared error on standardized targets (the loss), squared
        and absolute error in the target's units, and the row count (summed across ranks)."""
        with torch.no_grad():
            pred = model(x.to(device)).float().cpu()
        error = pred * target_std + target_mean - y
        standardized = pred - (y - target_mean) / target_std
        parts = [(standardized**2).sum(), (error**2).sum(), error.abs().sum(), len(y)]
        return torch.tensor([float(p) for p in parts], dtype=torch.float64)

    @staticmethod
    def _metrics(sums: torch.Tensor) -> dict[str, float]:
        loss, squared, absolute, count = sums.tolist()
        count = max(count, 1.0)
        return {"loss": loss / count, "rmse": math.sqrt(squared / count), "mae": absolute / count}

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, checkpoint_path: str, split: str = "test") -> EvalResult:
        """Load a checkpoint FILE (verified) and score it on a prepared split."""
        from tinyexp_core.data.tabular import load_tabular_split

        if not checkpoint_path:
            raise ConfigValueError("resume_from", checkpoint_path, "a checkpoint path to evaluate")
        data = self._prepared()
        state = ckpt.load_checkpoint(checkpoint_path)
        model = self.module_cfg.build_module(data.shape[0])
        ckpt.restore(state, model=model, path=str(checkpoint_path))
        model.eval()
        x, y = load_tabular_split(data.path, split)
        mean, std = data.params["target_mean"], data.params["target_std"]
        scores = self._metrics(self._error_sums(model, x, y, mean, std, torch.device("cpu")))
        # R^2 against predicting this split's own mean: 0 is no better than the mean
        r2 = 1.0 - scores["rmse"] ** 2 / float(y.double().var(unbiased=False))
        return EvalResult(
            checkpoint=str(checkpoint_path),
            split=split,
            primary_metric=self.primary_metric,
            metrics={"rmse": scores["rmse"], "mae": scores["mae"], "r2": r2},
            loss=scores["loss"],
            num_samples=len(y),
        )


if __name__ == "__main__":
    from tinyexp_core.cli import store_and_run_exp

    store_and_run_exp(Exp)
