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
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.config.experiment import TinyExp
from tinyexp_core.contract import EvalResult, PreparedData, PrimaryMetric, TrainResult
from tinyexp_core.lazy import lazy_module
from tinyexp_core.training import TrainingSession

# torch loads when training starts, not when the class is imported (Dagster imports it to
# build the launchpad's config schema).
torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
PREDICT_BATCH = 64  # images per forward pass when scoring (see Exp._predict)


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
        """How long to train."""

        num_epochs: int = 5
        # Seconds to sleep after each step: slows a tiny run down to a realistic pace (a
        # stop/resume demo on a laptop-sized dataset); 0 = off.
        step_delay_s: float = 0.0

        def validate(self) -> None:
            if self.num_epochs < 1:
                raise ConfigValueError("num_epochs", self.num_epochs, "an integer >= 1")
            if not 0 <= self.step_delay_s <= 60:
                raise ConfigValueError("step_delay_s", self.step_delay_s, "seconds in [0, 60]")

    accelerator_cfg: AcceleratorCfg = field(default_factory=AcceleratorCfg)
    data_cfg: DataCfg = field(default_factory=DataCfg)
    module_cfg: ModuleCfg = field(default_factory=ModuleCfg)
    optimizer_cfg: OptimizerCfg = field(default_factory=OptimizerCfg)
    lr_scheduler_cfg: LrSchedulerCfg = field(default_factory=LrSchedulerCfg)
    train_cfg: TrainCfg = field(default_factory=TrainCfg)

    # ------------------------------------------------------------------ data
    def prepare_data(self, storage_root: str) -> PreparedData:
        """Prepare the configured source under `<storage_root>/datasets`; returns its manifest.
        Nothing is loaded when the same preparation of unchanged files exists (data_memo)."""
        from tinyexp_core.data_memo import prepared_once

        out_root, cfg = os.path.join(storage_root, "datasets"), self.data_cfg
        params = {
            "source": cfg.source,
            "root": cfg.root,
            "seed": self.seed,
            "num_samples": cfg.num_samples,
            "image_size": cfg.image_size,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
        }
        manifest = prepared_once(
            out_root,
            params,
            source_files(cfg.source, cfg.root),
            lambda: cfg.build_prepared_dataset(out_root, seed=self.seed).to_dict(),
        )
        return PreparedData.from_dict(manifest)

    def _prepared_path(self) -> str:
        """The prepared dataset: `prepared_path`, else prepared now under `data_root`."""
        if not self.data_cfg.prepared_path:
            manifest = self.data_cfg.build_prepared_dataset(self.data_cfg.data_root, self.seed)
            self.data_cfg.prepared_path = manifest.path
        return self.data_cfg.prepared_path

    def _in_channels(self) -> int:
        from tinyexp_core.data import read_manifest

        return int(read_manifest(self.data_cfg.prepared_path).shape[0])

    # ------------------------------------------------------------------ train
    def train(self) -> TrainResult:
        """Train on every rank; returns the run (rank 0's view)."""
        with TrainingSession(self) as session:
            session.main_process_first(self._prepared_path)  # rank 0 prepares, others wait
            loader = self.data_cfg.build_loader("train", session.accelerator, self.seed)
            val_data = self._eval_shard("val", session.accelerator)
            torch.manual_seed(self.seed)  # the same initial weights on every rank
            model = self.module_cfg.build_module(self._in_channels())
            optimizer = self.optimizer_cfg.build_optimizer(model.parameters())
            scheduler = self.lr_scheduler_cfg.build_lr_scheduler(optimizer)
            # What every checkpoint holds; resumes from `resume_from` (mid-epoch too).
            model = session.setup(
                model,
                optimizer,
                scheduler,
                num_epochs=self.train_cfg.num_epochs,
                num_steps=len(loader),
            )
            for _epoch in session.epochs():
                model.train()
                for x, y in session.batches(loader):
                    x, y = x.to(session.device), y.to(session.device)
                    with session.autocast():
                        loss = F.cross_entropy(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    session.backward(loss)
                    optimizer.step()
                    session.step(loss, len(y))  # progress, stop requests, step checkpoints
                    if self.train_cfg.step_delay_s:
                        time.sleep(self.train_cfg.step_delay_s)
                scheduler.step()
                val = self._validate(session.accelerator, model, val_data)
                session.end_epoch(val_loss=val["loss"], metrics={"accuracy": val["accuracy"]})
            return session.result()

    def _eval_shard(self, split: str, acc: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's disjoint slice of a split (no padding, so counts are exact)."""
        from tinyexp_core.data import load_split

        x, y = load_split(self.data_cfg.prepared_path, split)
        return x[acc.rank :: acc.world_size], y[acc.rank :: acc.world_size]

    def _predict(self, model: torch.nn.Module, x: torch.Tensor, device: torch.device):
        """Logits for uint8 images, in batches, normalized like the training data.

        Batches of `PREDICT_BATCH`: a forward pass's activations are the largest memory of
        an evaluation (a 28x28 image: ~0.37 MiB of them in this network), so the batch
        bounds it whatever the split's size (rank 0 scores whole splits after training)."""
        cfg = self.data_cfg
        outs = []
        with torch.no_grad():
            for start in range(0, len(x), PREDICT_BATCH):
                batch = x[start : start + PREDICT_BATCH].to(device).float().div_(255)
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

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, checkpoint_path: str, split: str = "test") -> EvalResult:
        """Load a checkpoint FILE (verified) and report metrics on a prepared split."""
        from tinyexp_core.data import load_split
        from tinyexp_core.training.metrics import classification_report, confusion_matrix

        if not checkpoint_path:
            raise ConfigValueError("resume_from", checkpoint_path, "a checkpoint path to evaluate")
        self._prepared_path()
        state = ckpt.load_checkpoint(checkpoint_path)
        model = self.module_cfg.build_module(self._in_channels())
        ckpt.restore(state, model=model, path=str(checkpoint_path))
        del state  # the optimizer's state too: not needed to score
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


def source_files(source: str, root: str) -> list[str] | None:
    """The files a preparation of `source` reads (data_memo keys on them), this module's and
    the data code's included; None when they cannot be listed (prepared every time)."""
    import importlib.util

    own = [__file__]
    data_spec = importlib.util.find_spec("tinyexp_core.data")
    if data_spec is None or not data_spec.submodule_search_locations:
        return None
    data_dir = data_spec.submodule_search_locations[0]
    own += [os.path.join(data_dir, name) for name in ("prepared.py", "sources.py", "raw.py")]
    if source == "synthetic":
        return own
    if source == "digits":  # scikit-learn's bundled file, found without importing it
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            return None
        base = spec.submodule_search_locations[0]
        return [*own, os.path.join(base, "datasets", "data", "digits.csv.gz")]
    if not root or not os.path.isdir(root):
        return None  # the full path names what is missing
    folders = [root, os.path.join(root, "MNIST", "raw")] if source == "mnist" else None
    found = []
    if folders is not None:
        for folder in folders:
            if os.path.isdir(folder):
                found += [e.path for e in os.scandir(folder) if e.is_file()]
    else:  # image_folder: every file under root
        for folder, _, names in os.walk(root):
            found += [os.path.join(folder, n) for n in names]
    return [*own, *sorted(found)]
