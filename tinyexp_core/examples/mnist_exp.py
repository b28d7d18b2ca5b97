"""MNIST-style CNN: the default experiment of the pipeline.

Run it: `python -m tinyexp_core.examples.mnist_exp [key=value ...]`, for example
`launcher=ray num_workers=2 train_cfg.num_epochs=3`, or `mode=help` to see every key.
The default data is scikit-learn's bundled handwritten digits, upsampled to 28x28, so it
runs offline; `data_cfg.source=mnist data_cfg.root=DIR` reads MNIST IDX files instead.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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
from tinyexp_core.experiment import ENV_ASSET, ENV_ATTEMPT, TinyExp
from tinyexp_core.lazy import lazy_module
from tinyexp_core.recipe import StepCheckpoints, reporting, resolve_resume, resume_run, tracking
from tinyexp_core.step_checkpoint import DataPosition
from tinyexp_core.timing import mark

# torch loads when training starts, not when the class is imported (Dagster imports it to
# build the launchpad's config schema).
torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")


@dataclass(repr=False)
class Exp(TinyExp):
    """Image classification with DDP: data, model, optimizer, schedule and the loop."""

    primary_metric: ClassVar[PrimaryMetric] = PrimaryMetric("accuracy", "max")

    exp_name: str = "mnist_exp"

    @dataclass
    class DataCfg:
        """Where the data comes from and how it is batched."""

        source: Literal["digits", "mnist", "synthetic", "image_folder"] = "digits"
        root: str = ""  # IDX directory for mnist, class folders for image_folder
        prepared_path: str = ""  # a prepared dataset dir; empty: prepare under data_root
        data_root: str = "./data"  # where prepared datasets are written
        val_fraction: float = 0.1
        test_fraction: float = 0.2
        num_samples: int = 0  # synthetic only; 0 = the source's default
        image_size: int = 28
        batch_size: int = 32  # per rank
        mean: float = 0.1307
        std: float = 0.3081

        def validate(self) -> None:
            if self.batch_size < 1:
                raise ConfigValueError("batch_size", self.batch_size, "an integer >= 1")
            for name in ("val_fraction", "test_fraction"):
                value = getattr(self, name)
                if not 0.0 <= value < 1.0:
                    raise ConfigValueError(name, value, "a fraction in [0, 1)")
            if self.std <= 0:
                raise ConfigValueError("std", self.std, "a number > 0")

        def build_prepared_dataset(self, out_root: str, seed: int = 0):
            """Load the source and write the prepared train/val/test tensors (idempotent)."""
            from tinyexp_core.data import load_source, prepare_dataset

            raw = load_source(
                self.source,
                root=self.root,
                seed=seed,
                num_samples=self.num_samples,
                image_size=self.image_size,
            )
            return prepare_dataset(
                raw,
                out_root,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                seed=seed,
            )

        def build_loader(self, split: str, accelerator: Any, seed: int = 0):
            """A tensor-indexed batch loader over this rank's shard of a prepared split."""
            from tinyexp_core.data import TensorBatchLoader, load_split

            x, y = load_split(self.prepared_path, split)
            return TensorBatchLoader(
                x,
                y,
                self.batch_size,
                rank=accelerator.rank,
                world_size=accelerator.world_size,
                shuffle=split == "train",
                seed=seed,
                mean=self.mean,
                std=self.std,
            )

    @dataclass
    class ModuleCfg:
        """The network."""

        num_classes: int = 10
        dropout: float = 0.25

        def validate(self) -> None:
            if not 0.0 <= self.dropout < 0.5:
                raise ConfigValueError("dropout", self.dropout, "a probability in [0, 0.5)")

        def build_module(self, in_channels: int = 1) -> torch.nn.Module:
            from tinyexp_core.examples.nets import Net

            return Net(self.num_classes, in_channels, self.dropout)

    @dataclass
    class OptimizerCfg:
        """Optimizer; `lr` is the learning rate for the whole (global) batch."""

        name: Literal["adam", "adamw", "sgd", "adadelta"] = "adam"
        lr: float = 1e-3
        weight_decay: float = 0.0
        momentum: float = 0.9  # sgd only

        def validate(self) -> None:
            if not (self.lr > 0 and math.isfinite(self.lr)):
                raise ConfigValueError("lr", self.lr, "a finite number > 0")
            if self.weight_decay < 0:
                raise ConfigValueError("weight_decay", self.weight_decay, "a number >= 0")

        def build_optimizer(self, params: Any) -> torch.optim.Optimizer:
            if self.name == "adam":
                return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
            if self.name == "adamw":
                return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
            if self.name == "sgd":
                return torch.optim.SGD(
                    params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
                )
            return torch.optim.Adadelta(params, lr=self.lr, weight_decay=self.weight_decay)

    @dataclass
    class LrSchedulerCfg:
        """Step decay of the learning rate once per epoch."""

        step_size: int = 1  # epochs
        gamma: float = 0.7

        def validate(self) -> None:
            if self.step_size < 1:
                raise ConfigValueError("step_size", self.step_size, "an integer >= 1")
            if not 0 < self.gamma <= 1:
                raise ConfigValueError("gamma", self.gamma, "a factor in (0, 1]")

        def build_lr_scheduler(self, optimizer: torch.optim.Optimizer):
            return torch.optim.lr_scheduler.StepLR(optimizer, self.step_size, self.gamma)

    @dataclass
    class TrainCfg:
        """How long to train and how often to report."""

        num_epochs: int = 5
        log_every_n_steps: int = 10
        # Seconds to sleep after each step: slows a tiny run down to a realistic pace (a
        # stop/resume demo on a laptop-sized dataset); 0 = off.
        step_delay_s: float = 0.0

        def validate(self) -> None:
            if self.num_epochs < 1:
                raise ConfigValueError("num_epochs", self.num_epochs, "an integer >= 1")
            if not 0 <= self.step_delay_s <= 60:
                raise ConfigValueError("step_delay_s", self.step_delay_s, "seconds in [0, 60]")
            if self.log_every_n_steps < 1:
                raise ConfigValueError("log_every_n_steps", self.log_every_n_steps, ">= 1")

    accelerator_cfg: AcceleratorCfg = field(default_factory=AcceleratorCfg)
    data_cfg: DataCfg = field(default_factory=DataCfg)
    module_cfg: ModuleCfg = field(default_factory=ModuleCfg)
    optimizer_cfg: OptimizerCfg = field(default_factory=OptimizerCfg)
    lr_scheduler_cfg: LrSchedulerCfg = field(default_factory=LrSchedulerCfg)
    train_cfg: TrainCfg = field(default_factory=TrainCfg)

    # ------------------------------------------------------------------ data
    def prepare_data(self, storage_root: str) -> PreparedData:
        """Prepare the configured source under `<storage_root>/datasets`; returns its manifest."""
        manifest = self.data_cfg.build_prepared_dataset(
            os.path.join(storage_root, "datasets"), seed=self.seed
        )
        return PreparedData.from_dict(manifest.to_dict())

    def _ensure_prepared(self, accelerator: Any) -> None:
        """Rank 0 prepares the data when no prepared path is given; the others wait."""
        if self.data_cfg.prepared_path:
            return
        if accelerator.is_main_process:
            manifest = self.data_cfg.build_prepared_dataset(self.data_cfg.data_root, self.seed)
            self.data_cfg.prepared_path = manifest.path
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            manifest = self.data_cfg.build_prepared_dataset(self.data_cfg.data_root, self.seed)
            self.data_cfg.prepared_path = manifest.path

    def _in_channels(self) -> int:
        from tinyexp_core.data import read_manifest

        return int(read_manifest(self.data_cfg.prepared_path).shape[0])

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        """Train with the configured accelerator; returns the run (rank 0's view)."""
        accelerator = self.accelerator_cfg.build_accelerator()
        try:
            return self._train(accelerator)
        finally:
            accelerator.destroy()

    def _train(self, acc: Any) -> TrainResult:
        run_dir = self.ensure_run_dir()
        logger = self.logger_cfg.build_logger(run_dir, distributed_rank=acc.rank)
        if acc.is_main_process:
            logger.info(f"run {self.run_id} in {run_dir}, world size {acc.world_size}")
            logger.info(f"overrides: {self.overrided_cfg or 'none'}")
            logger.info("effective config:\n" + self.config_yaml())
        mark(f"process_group_ready_rank{acc.rank}")
        self._ensure_prepared(acc)
        reporter = self.progress_cfg.build_reporter(
            self.run_id, is_main_process=acc.is_main_process
        )
        train_loader = self.data_cfg.build_loader("train", acc, self.seed)
        val_loader_data = self._eval_shard("val", acc)
        mark(f"dataset_loaded_rank{acc.rank}")

        torch.manual_seed(self.seed)
        model = self.module_cfg.build_module(self._in_channels())
        optimizer = self.optimizer_cfg.build_optimizer(model.parameters())
        scheduler = self.lr_scheduler_cfg.build_lr_scheduler(optimizer)
        # Mid-epoch (a step checkpoint), this rank's RNG comes back too.
        resumed = resume_run(
            resolve_resume(self.resume_from, self.checkpoint_cfg, run_dir, logger),
            accelerator=acc,
            num_steps=len(train_loader),
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            logger=logger,
        )
        position, step, history = resumed.position, resumed.step, resumed.history
        tracked = resumed.tracked  # the tracker run the checkpoint continues
        if acc.is_main_process:
            # Written once a resumed checkpoint fits: a config the checkpoints in this run
            # dir reject must not replace the description of those checkpoints.
            self.dump_config(run_dir)
        model = acc.prepare_model(model)
        manager = self.checkpoint_cfg.build_manager(run_dir)
        num_epochs = self.train_cfg.num_epochs
        reporter.start(
            asset=os.environ.get(ENV_ASSET, ""),
            num_epochs=num_epochs,
            num_steps=len(train_loader),  # per epoch, as the progress contract says
            world_size=acc.world_size,
            attempt=int(os.environ.get(ENV_ATTEMPT, "1")),
        )
        tracker = self.wandb_cfg.build_tracker(
            run_dir,
            config=self.config_dict(),
            name=self.run_id,
            is_main_process=acc.rank == 0,
            resume=tracked,
        )
        # Every checkpoint names the tracker run, so a resume continues it.
        tracked = tracker.resume_state()
        # After each step: a stop request (checkpoint, then stop) or a periodic step
        # checkpoint; the dict below is what it saves, plus position and every rank's RNG.
        after_step = StepCheckpoints(
            acc,
            manager,
            checkpoint_cfg=self.checkpoint_cfg,
            num_steps=len(train_loader),
            sampler_seed=self.seed,
            fields=lambda: {
                "model": acc.unwrap_model(model),
                "optimizer": optimizer,
                "scheduler": scheduler,
                "config": self.config_dict(),
                "exp_class": self.exp_class,
                "extra": {
                    "history": [r.to_dict() for r in history],
                    "tracker": dict(tracked),
                },
            },
            reporter=reporter,
            logger=logger,
        )

        started = time.perf_counter()
        first_new = len(history)
        with reporting(reporter), tracking(tracker), after_step:
            for epoch in range(position.epoch, num_epochs):
                record = self._train_one_epoch(
                    acc, model, optimizer, train_loader, epoch, step, reporter, logger,
                    start=position, after_step=after_step,
                )  # fmt: skip
                step = record.step
                position = DataPosition(epoch=epoch + 1)
                scheduler.step()
                reporter.heartbeat()  # validation can be long; it is not a stall
                val = self._validate(acc, model, val_loader_data)
                record.val_loss, record.metrics = val["loss"], {"accuracy": val["accuracy"]}
                history.append(record)
                # At the global optimizer step: a resumed run's rows follow its checkpoint's.
                tracker.log(record.to_row(), step=record.step)
                best = self._save_epoch(
                    acc, manager, model, optimizer, scheduler, history, reporter,
                    tracked=tracked, checkpoints=after_step,
                )  # fmt: skip
                reporter.epoch_end(
                    epoch=epoch,
                    loss=record.train_loss,
                    metrics={
                        "val_accuracy": val["accuracy"],
                        "val_loss": val["loss"],
                        "best_metric": best,
                    },
                )
                logger.info(
                    f"epoch {epoch + 1}/{num_epochs} train_loss {record.train_loss:.4f} "
                    f"val_loss {val['loss']:.4f} val_accuracy {val['accuracy']:.4f} "
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
        # the W&B run id and directory, if tracked
        result.tracker.update(tracker.finish(result.to_dict()))
        return result

    def _train_one_epoch(
        self, acc, model, optimizer, loader, epoch, step, reporter, logger, *,
        start: DataPosition | None = None, after_step=None,
    ) -> EpochRecord:  # fmt: skip
        """One epoch (from `start` when resuming mid-epoch); `after_step(step, position)`
        runs after each optimizer step (stop requests, periodic step checkpoints)."""
        position = start or DataPosition(epoch=epoch)
        if position.step_in_epoch == 0:
            # Reseed per epoch and rank: dropout is then a function of (seed, epoch, rank).
            # Mid-epoch, the checkpoint restored this rank's RNG state instead.
            torch.manual_seed(self.seed + 1000 * epoch + acc.rank)
        first_step = step + 1
        loader.set_epoch(epoch, start_step=position.step_in_epoch)
        model.train()
        loss_sum = torch.tensor(position.loss_sum, dtype=torch.float64)
        seen = position.seen
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(loader, start=position.step_in_epoch):
            x, y = x.to(acc.device, non_blocking=True), y.to(acc.device, non_blocking=True)
            with acc.autocast():
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            optimizer.step()
            step += 1
            if step == first_step:
                mark(f"first_step_rank{acc.rank}")
            loss_sum += loss.detach().double().cpu() * len(y)
            seen += len(y)
            if (i + 1) % self.train_cfg.log_every_n_steps == 0:
                lr = optimizer.param_groups[0]["lr"]
                rate = seen * acc.world_size / max(time.perf_counter() - t0, 1e-9)
                reporter.step(epoch=epoch, step=i, loss=loss.item(), lr=lr, samples_per_s=rate)
                logger.debug(f"epoch {epoch} step {step} loss {loss.item():.4f}")
            if self.train_cfg.step_delay_s:
                time.sleep(self.train_cfg.step_delay_s)
            if after_step is not None:
                after_step(step, DataPosition(epoch, i + 1, float(loss_sum), seen))
        elapsed = time.perf_counter() - t0
        totals = acc.reduce_sum(torch.tensor([float(loss_sum), float(seen)], dtype=torch.float64))
        return EpochRecord(
            epoch=epoch,
            step=step,
            train_loss=float(totals[0] / max(float(totals[1]), 1.0)),
            val_loss=math.nan,  # filled in by validation
            lr=optimizer.param_groups[0]["lr"],
            samples_per_s=float(totals[1]) / max(elapsed, 1e-9),
            epoch_time_s=elapsed,
        )

    def _eval_shard(self, split: str, acc: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's disjoint slice of a split (no padding, so counts are exact)."""
        from tinyexp_core.data import load_split

        x, y = load_split(self.data_cfg.prepared_path, split)
        return x[acc.rank :: acc.world_size], y[acc.rank :: acc.world_size]

    def _predict(self, model: torch.nn.Module, x: torch.Tensor, device: torch.device):
        """Logits for uint8 images, in batches, normalized like the training data."""
        cfg = self.data_cfg
        outs = []
        with torch.no_grad():
            for start in range(0, len(x), 512):
                batch = x[start : start + 512].to(device).float().div_(255)
                outs.append(model(batch.sub_(cfg.mean).div_(cfg.std)).float().cpu())
        return torch.cat(outs) if outs else torch.empty(0, self.module_cfg.num_classes)

    def _validate(self, acc: Any, model: torch.nn.Module, data) -> dict[str, float]:
        x, y = data
        model.eval()
        logits = self._predict(model, x, acc.device)
        loss = F.cross_entropy(logits, y, reduction="sum") if len(y) else torch.zeros(())
        correct = (logits.argmax(1) == y).sum() if len(y) else torch.zeros(())
        totals = acc.reduce_sum(
            torch.tensor([float(loss), float(correct), float(len(y))], dtype=torch.float64)
        )
        count = max(float(totals[2]), 1.0)
        return {"loss": float(totals[0]) / count, "accuracy": float(totals[1]) / count}

    def _save_epoch(
        self, acc, manager, model, optimizer, scheduler, history, reporter, *,
        tracked: dict | None = None, checkpoints: StepCheckpoints | None = None,
    ) -> float:  # fmt: skip
        """Rank 0 writes the epoch file, last.pt (and best.pt); returns the best accuracy.
        `tracked`: the tracker run to continue on resume (`tracker.resume_state()`).

        With `checkpoints` (the loop's `StepCheckpoints`) rank 0 snapshots the state and the
        files are written in the background while the next epoch trains (the `with` block
        around the loop waits for the last write); without it, rank 0 writes them now and
        every rank waits."""
        record = history[-1]
        metric = self.primary_metric
        best = metric.best(r.metric(metric.name) for r in history)
        if acc.is_main_process:
            state = ckpt.build_checkpoint(
                model=acc.unwrap_model(model),
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=record.epoch,
                step=record.step,
                config=self.config_dict(),
                metrics={"train_loss": record.train_loss, **record.metrics},
                exp_class=self.exp_class,
                extra={"history": [r.to_dict() for r in history], "tracker": dict(tracked or {})},
            )
            is_best = metric.is_at_least_as_good(record.metric(metric.name), best)

            def saved(paths: dict[str, str], epoch: int = record.epoch) -> None:
                reporter.checkpoint(path=paths["last"], epoch=epoch, best_metric=best)

            if checkpoints is not None:
                checkpoints.save_epoch(state, is_best=is_best, on_saved=saved)
            else:
                saved(manager.save(state, is_best=is_best))
        if checkpoints is None:
            acc.wait_for_everyone()
        return best

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, checkpoint_path: str, split: str = "test") -> EvalResult:
        """Load a checkpoint FILE (verified) and report metrics on a prepared split."""
        from tinyexp_core.data import load_split
        from tinyexp_core.metrics import classification_report, confusion_matrix

        if not checkpoint_path:
            raise ConfigValueError("resume_from", checkpoint_path, "a checkpoint path to evaluate")
        if not self.data_cfg.prepared_path:
            manifest = self.data_cfg.build_prepared_dataset(self.data_cfg.data_root, self.seed)
            self.data_cfg.prepared_path = manifest.path
        state = ckpt.load_checkpoint(checkpoint_path)
        model = self.module_cfg.build_module(self._in_channels())
        ckpt.restore(state, model=model, path=str(checkpoint_path))
        model.eval()
        x, y = load_split(self.data_cfg.prepared_path, split)
        logits = self._predict(model, x, torch.device("cpu"))
        report = classification_report(
            confusion_matrix(logits.argmax(1), y, self.module_cfg.num_classes)
        )
        return EvalResult(
            checkpoint=str(checkpoint_path),
            split=split,
            primary_metric=self.primary_metric,
            metrics={"accuracy": report["accuracy"]},
            loss=float(F.cross_entropy(logits, y)) if len(y) else math.nan,
            num_samples=report["num_samples"],
            per_class=report["per_class"],
            confusion_matrix=report["confusion_matrix"],
        )


def __getattr__(name: str) -> Any:
    # `Net` moved to `examples.nets` (a torch import); kept importable from here.
    if name == "Net":
        from tinyexp_core.examples.nets import Net

        return Net
    raise AttributeError(name)


if __name__ == "__main__":
    from tinyexp_core.cli import store_and_run_exp

    store_and_run_exp(Exp)
