"""ResNet on an image folder, with decoded samples cached in Redis.

Run it: `python -m tinyexp_core.examples.resnet_exp data_cfg.root=DIR [key=value ...]`,
where DIR holds one sub-folder of images per class. The training loop is the MNIST
experiment's; only the data (RGB image folder, Redis cache) and the network differ.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Literal

from tinyexp_core.config.env import ENV_CACHE_URL, ENV_PROGRESS_URL
from tinyexp_core.config.exceptions import ConfigValueError
from tinyexp_core.config.experiment import check_redis_url
from tinyexp_core.examples.mnist_exp import Exp as MnistExp
from tinyexp_core.lazy import lazy_module

nn = lazy_module("torch.nn")  # loaded when the model is built, not on import


@dataclass(repr=False)
class Exp(MnistExp):
    """ResNet-18/34 with a CIFAR-style stem, trained on `root/<class_name>/*.png`."""

    exp_name: str = "resnet_exp"

    @dataclass
    class DataCfg(MnistExp.DataCfg):
        """An RGB image folder, decoded once through an optional Redis sample cache."""

        source: Literal["digits", "mnist", "synthetic", "image_folder"] = "image_folder"
        image_size: int = 32
        mean: float = 0.5  # of pixel values scaled to [0, 1], all channels
        std: float = 0.25
        redis_cache: bool = True
        cache_url: str = ""  # empty: $TINYEXP_CACHE_URL, then $TINYEXP_PROGRESS_URL
        cache_ttl_s: int = 7 * 24 * 3600  # seconds a cached sample lives; 0 = no expiry

        def validate(self) -> None:
            super().validate()
            if self.cache_ttl_s < 0:
                raise ConfigValueError("cache_ttl_s", self.cache_ttl_s, "seconds >= 0")
            if self.cache_url:
                check_redis_url("cache_url", self.cache_url)

        def build_sample_cache(self):
            """A RedisSampleCache for this folder and image size, or None (with a warning)."""
            from loguru import logger

            from tinyexp_core.data import RedisSampleCache, sample_cache_url
            from tinyexp_core.services.redis_client import make_client

            if not self.redis_cache:
                return None
            url = sample_cache_url(self.cache_url)
            if not url:
                logger.warning(
                    "data_cfg.redis_cache=true but no cache URL: data_cfg.cache_url, "
                    f"${ENV_CACHE_URL} and ${ENV_PROGRESS_URL} are all empty; decoding uncached"
                )
                return None
            client = make_client(
                url, socket_timeout_s=5.0, connect_timeout_s=2.0, decode_responses=False
            )
            return RedisSampleCache(client, self.cache_namespace(), self.cache_ttl_s or None)

        def cache_namespace(self) -> str:
            """Same folder, files and size -> same namespace: runs and ranks share one cache."""
            from tinyexp_core.data import ImageFolderDataset

            root = os.path.abspath(self.root)
            digest = hashlib.sha256(f"{root}|{self.image_size}".encode())
            # Keys are sample indices, so a file added, removed or rewritten must change the
            # namespace; otherwise an index would serve another file's pixels.
            for path, _ in ImageFolderDataset(root, self.image_size).samples:
                stat = path.stat()
                digest.update(
                    f"|{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
                )
            return f"imgfolder-{digest.hexdigest()[:16]}"

        def build_prepared_dataset(self, out_root: str, seed: int = 0):
            """Decode the folder (through the cache) and write the prepared splits."""
            from loguru import logger

            from tinyexp_core.data import load_image_folder, prepare_dataset

            if self.source != "image_folder":
                return super().build_prepared_dataset(out_root, seed)
            if self.num_samples:
                logger.warning("data_cfg.num_samples is ignored by image_folder: all images used")
            cache = self.build_sample_cache()
            try:
                raw = load_image_folder(self.root, self.image_size, cache=cache)
            finally:
                if cache is not None:
                    logger.info(
                        f"image cache {cache.namespace}: {cache.hits} hits, "
                        f"{cache.misses} misses, {cache.errors} errors"
                    )
                    cache.client.close()
            return prepare_dataset(
                raw,
                out_root,
                val_fraction=self.val_fraction,
                test_fraction=self.test_fraction,
                seed=seed,
            )

    @dataclass
    class ModuleCfg(MnistExp.ModuleCfg):
        """A torchvision ResNet (random init) with a 3x3 stride-1 stem and no max-pool."""

        arch: Literal["resnet18", "resnet34"] = "resnet18"
        dropout: float = 0.0  # ResNet has no dropout; kept for the MNIST loop's config

        def build_module(self, in_channels: int = 3) -> nn.Module:
            import torchvision
            from loguru import logger

            if self.dropout:
                logger.warning(f"module_cfg.dropout={self.dropout} has no effect on a ResNet")
            model = getattr(torchvision.models, self.arch)(
                weights=None, num_classes=self.num_classes
            )
            # Small images: a 7x7 stride-2 stem plus max-pool would shrink 32 px to 8 px at once.
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
            return model

    data_cfg: DataCfg = field(default_factory=DataCfg)
    module_cfg: ModuleCfg = field(default_factory=ModuleCfg)


if __name__ == "__main__":
    from tinyexp_core.cli import store_and_run_exp

    store_and_run_exp(Exp)
