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

import itertools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tinyexp_core import checkpoint as ckpt
from tinyexp_core.accelerators import AcceleratorCfg
from tinyexp_core.contract import (
    Checkpoints,
    EpochRecord,
    EvalResult,
    PreparedData,
    PrimaryMetric,
    TrainResult,
)
from tinyexp_core.exceptions import ConfigValueError
from tinyexp_core.experiment import ENV_ASSET, TinyExp
from tinyexp_core.launchers.runtime import get_log_forwarder
from tinyexp_core.lazy import lazy_module
from tinyexp_core.recipe import (
    StepCheckpoints,
    main_process_first,
    reporting,
    resolve_resume,
    resume_run,
)
from tinyexp_core.step_checkpoint import DataPosition

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
        """How long to train and how often to report."""

        num_epochs: int = 20
        log_every_n_steps: int = 5
        num_threads: int = 1  # torch CPU threads per rank; 0: torch's default

        def validate(self) -> None:
            if self.num_epochs < 1:
                raise ConfigValueError("num_epochs", self.num_epochs, "an integer >= 1")
            if self.log_every_n_steps < 1:
                raise ConfigValueError("log_every_n_steps", self.log_every_n_steps, ">= 1")
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
        """Train with the configured accelerator; returns the run (rank 0's view)."""
        threads = torch.get_num_threads()
        if self.train_cfg.num_threads:
            # Threads only pay off for large kernels; on a 32 x 64 matmul they wait on each other.
            torch.set_num_threads(self.train_cfg.num_threads)
        acc = self.accelerator_cfg.build_accelerator()
        try:
            return self._train(acc)
        finally:
            acc.destroy()
            torch.set_num_threads(threads)  # the process may go on with other work

    def _train(self, acc: Any) -> TrainResult:
        from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

        from tinyexp_core.data.tabular import load_tabular_split

        started = time.perf_counter()
        run_dir = self.ensure_run_dir()
        logger = self.logger_cfg.build_logger(
            run_dir, distributed_rank=acc.rank, extra_sink=get_log_forwarder()
        )
        if acc.is_main_process:
            logger.info(f"run {self.run_id} in {run_dir}, world size {acc.world_size}")
            logger.info(f"overrides: {self.overrided_cfg or 'none'}")

        # data: rank 0 prepares (if needed) while the others wait; each rank gets a shard
        data = main_process_first(acc, self._prepared)
        target_mean, target_std = data.params["target_mean"], data.params["target_std"]
        x_train, y_train = load_tabular_split(data.path, "train")
        train_set = TensorDataset(x_train, (y_train - target_mean) / target_std)
        # DistributedSampler pads so every rank sees as many batches: unequal counts hang DDP
        sampler = DistributedSampler(
            train_set, num_replicas=acc.world_size, rank=acc.rank, shuffle=True, seed=self.seed
        )
        # Its own generator: iterating a DataLoader draws a seed from the global RNG
        # otherwise, which a run resumed mid-epoch (RNG restored after that draw) would
        # draw again, shifting every dropout mask after it.
        loader = DataLoader(
            train_set,
            batch_size=self.data_cfg.batch_size,
            sampler=sampler,
            generator=torch.Generator(),
        )
        x_val, y_val = load_tabular_split(data.path, "val")
        x_val, y_val = x_val[acc.rank :: acc.world_size], y_val[acc.rank :: acc.world_size]

        # model, optimizer, and the checkpoint to resume from (same init on every rank)
        torch.manual_seed(self.seed)
        model = self.module_cfg.build_module(data.shape[0])
        optimizer = self.optimizer_cfg.build_optimizer(model.parameters())
        # An epoch checkpoint continues at the next epoch; a step checkpoint inside its
        # epoch, with this rank's RNG as it was at that step.
        resumed = resume_run(
            resolve_resume(self.resume_from, self.checkpoint_cfg, run_dir, logger),
            accelerator=acc,
            num_steps=len(loader),
            model=model,
            optimizer=optimizer,
            logger=logger,
        )
        position, step, history = resumed.position, resumed.step, resumed.history
        if acc.is_main_process:
            self.dump_config(run_dir)  # after the resume check: the checkpoints' description
            logger.info("effective config:\n" + self.config_yaml())
        model = acc.prepare_model(model)
        manager = self.checkpoint_cfg.build_manager(run_dir)
        reporter = self.progress_cfg.build_reporter(
            self.run_id, is_main_process=acc.is_main_process
        )
        reporter.start(
            asset=os.environ.get(ENV_ASSET, ""),
            num_epochs=self.train_cfg.num_epochs,
            num_steps=len(loader),  # per epoch
            world_size=acc.world_size,
            attempt=int(os.environ.get("TINYEXP_ATTEMPT", "1")),
        )
        # After each step: a stop request (checkpoint, then stop) or a periodic step
        # checkpoint; the dict below is what it saves, plus position and every rank's RNG.
        after_step = StepCheckpoints(
            acc,
            manager,
            checkpoint_cfg=self.checkpoint_cfg,
            num_steps=len(loader),
            sampler_seed=self.seed,
            fields=lambda: {
                "model": acc.unwrap_model(model),
                "optimizer": optimizer,
                "config": self.config_dict(),
                "exp_class": self.exp_class,
                "extra": {"history": [r.to_dict() for r in history]},
            },
            reporter=reporter,
            logger=logger,
        )

        first_new = len(history)
        with reporting(reporter), after_step:
            for epoch in range(position.epoch, self.train_cfg.num_epochs):
                record = self._train_one_epoch(
                    acc, model, optimizer, loader, epoch, step, reporter,
                    start=position, after_step=after_step,
                )  # fmt: skip
                step = record.step
                position = DataPosition(epoch=epoch + 1)
                reporter.heartbeat()  # validation is part of the epoch, not a stall
                model.eval()
                sums = self._error_sums(model, x_val, y_val, target_mean, target_std, acc.device)
                val = self._metrics(acc.reduce_sum(sums))
                record.val_loss = val["loss"]
                record.metrics = {"rmse": val["rmse"], "mae": val["mae"]}
                history.append(record)
                best = self._save_epoch(acc, manager, model, optimizer, history, reporter)
                reporter.epoch_end(
                    epoch=epoch,
                    loss=record.train_loss,
                    metrics={"val_rmse": val["rmse"], "val_loss": val["loss"], "best_metric": best},
                )
                logger.info(
                    f"epoch {epoch + 1}/{self.train_cfg.num_epochs} "
                    f"train_loss {record.train_loss:.4f} val_rmse {val['rmse']:.2f} "
                    f"{record.samples_per_s:.0f} samples/s"
                )

        trained_now = [r.samples_per_s for r in history[first_new:]]
        result = TrainResult(
            run_id=self.run_id,
            run_dir=run_dir,
            checkpoints=Checkpoints(best=str(manager.best_path), last=str(manager.last_path)),
            history=history,
            primary_metric=self.primary_metric,
            wall_time_s=time.perf_counter() - started,
            world_size=acc.world_size,
            config=self.config_dict(),
            resumed_from=resumed.path,
            samples_per_s=sum(trained_now) / len(trained_now) if trained_now else math.nan,
        )
        if acc.is_main_process:
            best_epoch = result.best_record.epoch + 1
            logger.info(f"best val rmse {result.best_value:.2f} at epoch {best_epoch}")
        return result

    def _train_one_epoch(
        self, acc, model, optimizer, loader, epoch, step, reporter, *,
        start: DataPosition | None = None, after_step=None,
    ) -> EpochRecord:  # fmt: skip
        """One pass over this rank's shard (from `start` when resuming mid-epoch); the
        record's losses are averaged over all ranks. `after_step(step, position)` runs after
        each optimizer step (stop requests, periodic step checkpoints)."""
        position = start or DataPosition(epoch=epoch)
        if position.step_in_epoch == 0:
            # Seeded per epoch and rank: a run resumed at an epoch boundary sees the same
            # dropout masks as an uninterrupted one (mid-epoch, the checkpoint's RNG does).
            torch.manual_seed(self.seed + 1000 * epoch + acc.rank)
        loader.sampler.set_epoch(epoch)  # the order depends on seed and epoch only
        model.train()
        loss_sum, seen, t0 = position.loss_sum, position.seen, time.perf_counter()
        # Mid-epoch, the batches done before the stop are drawn and dropped (in memory: cheap).
        batches = itertools.islice(enumerate(loader), position.step_in_epoch, None)
        for i, (x, y) in batches:
            x, y = x.to(acc.device), y.to(acc.device)
            with acc.autocast():
                loss = F.mse_loss(model(x).float(), y)  # on standardized targets
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(y)
            seen += len(y)
            if (i + 1) % self.train_cfg.log_every_n_steps == 0:
                rate = seen * acc.world_size / max(time.perf_counter() - t0, 1e-9)
                lr = optimizer.param_groups[0]["lr"]
                reporter.step(epoch=epoch, step=i, loss=loss.item(), lr=lr, samples_per_s=rate)
            if after_step is not None:
                after_step(step, DataPosition(epoch, i + 1, loss_sum, seen))
        elapsed = time.perf_counter() - t0
        totals = acc.reduce_sum(torch.tensor([loss_sum, float(seen)], dtype=torch.float64))
        return EpochRecord(
            epoch=epoch,
            step=step,
            train_loss=float(totals[0] / totals[1]),
            val_loss=math.nan,  # filled in by validation
            lr=optimizer.param_groups[0]["lr"],
            samples_per_s=float(totals[1]) / max(elapsed, 1e-9),
            epoch_time_s=elapsed,
        )

    def _save_epoch(self, acc, manager, model, optimizer, history, reporter) -> float:
        """Rank 0 writes last.pt (and best.pt); every rank waits. Returns the best rmse."""
        record = history[-1]
        best = self.primary_metric.best(r.metric("rmse") for r in history)
        if acc.is_main_process:
            state = ckpt.build_checkpoint(
                model=acc.unwrap_model(model),
                optimizer=optimizer,
                epoch=record.epoch,
                step=record.step,
                config=self.config_dict(),
                metrics={"train_loss": record.train_loss, **record.metrics},
                exp_class=self.exp_class,
                extra={"history": [r.to_dict() for r in history]},
            )
            is_best = self.primary_metric.is_at_least_as_good(record.metric("rmse"), best)
            paths = manager.save(state, is_best=is_best)
            reporter.checkpoint(path=paths["last"], epoch=record.epoch, best_metric=best)
        acc.wait_for_everyone()
        return best

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
