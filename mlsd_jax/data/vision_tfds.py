"""Fashion-MNIST as a tensorflow-datasets dataset, built from the packaged IDX files (no download).

:class:`FashionMnistPackaged` is a ``tfds.core.GeneratorBasedBuilder`` whose
``_split_generators`` reads the four IDX files of the Debian package ``dataset-fashion-mnist``
(fetched and sha256-checked by :func:`mlsd_jax.data.vision.fashion_mnist_paths`; Fashion-MNIST
by Zalando Research, MIT licence) with :func:`~mlsd_jax.data.vision.read_idx_pair` and splits
them with the same seeded rule as :func:`~mlsd_jax.data.vision.load_fashion_mnist`
(:func:`~mlsd_jax.data.vision.stratified_holdout`): ``train`` and ``validation`` from the
training file, ``test`` = ``t10k``. Features: ``image`` (``tfds.features.Image(shape=(28, 28,
1))``), ``label`` (``ClassLabel`` with the ten class names) and ``index`` (the row in the source
file). Examples keep the source order (``disable_shuffling``), so the arrays read back equal
the direct IDX path's.

:func:`build_fashion_mnist_tfds` prepares it under ``$MLSD_JAX_CACHE/tfds`` (or ``data_dir``);
afterwards, with this module imported, ``tfds.builder("fashion_mnist_packaged",
data_dir=...)`` / ``tfds.load`` see a normal prepared dataset. The config name records the
split rule (``valid5000_seed0`` by default); a build from another folder of IDX files
(``source_dir``) gets a config name of its own (``local<hash of the path>_valid..._seed...``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from mlsd_jax.data.fetch import cache_dir
from mlsd_jax.data.vision import FASHION_MNIST_CLASSES, fashion_mnist_paths, idx_folder_paths, \
    read_idx_pair, stratified_holdout

__all__ = ["FashionMnistConfig", "FashionMnistPackaged", "build_fashion_mnist_tfds",
           "tfds_arrays"]

_CITATION = """@article{xiao2017fashion,
  title={Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  author={Xiao, Han and Rasul, Kashif and Vollgraf, Roland},
  journal={arXiv preprint arXiv:1708.07747},
  year={2017}
}"""


@dataclasses.dataclass(eq=False)
class FashionMnistConfig(tfds.core.BuilderConfig):
    """Split rule: ``n_valid`` stratified validation rows carved out of train with ``seed``;
    ``source_dir``: a folder with the four IDX files instead of the packaged ones."""

    n_valid: int = 5000
    seed: int = 0
    source_dir: str | None = None


def _config(n_valid: int, seed: int, source_dir: os.PathLike | None = None) -> FashionMnistConfig:
    name = f"valid{int(n_valid)}_seed{int(seed)}"
    where = "the Debian package's IDX files"
    if source_dir is not None:
        source_dir = str(pathlib.Path(source_dir).resolve())
        name = f"local{hashlib.sha1(source_dir.encode()).hexdigest()[:10]}_{name}"
        where = source_dir
    return FashionMnistConfig(
        name=name, n_valid=int(n_valid), seed=int(seed), source_dir=source_dir,
        description=f"{where}; validation: {n_valid} stratified from train, seed {seed}")


class FashionMnistPackaged(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (Zalando Research, MIT) from the Debian ``dataset-fashion-mnist`` files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "train / validation (stratified, seeded) / test from the IDX files."}
    BUILDER_CONFIGS = [_config(5000, 0)]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="Fashion-MNIST: 28x28 grayscale images of 10 clothing classes (Zalando "
                        "Research, MIT), read from the Debian package dataset-fashion-mnist.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
                "index": tfds.features.Scalar(dtype=np.int64, doc="row in the source IDX file"),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation=_CITATION,
            license="MIT",
            disable_shuffling=True,  # keep the source order: equal to the direct IDX arrays
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the files come from the package cache, not from a download
        cfg = self.builder_config
        paths = idx_folder_paths(cfg.source_dir) if cfg.source_dir else fashion_mnist_paths()
        tr_x, tr_y = read_idx_pair(paths[("train", "images-idx3")], paths[("train", "labels-idx1")])
        te_x, te_y = read_idx_pair(paths[("test", "images-idx3")], paths[("test", "labels-idx1")])
        keep, hold = stratified_holdout(tr_y, cfg.n_valid, cfg.seed)
        return {
            "train": self._generate_examples(tr_x, tr_y, keep),
            "validation": self._generate_examples(tr_x, tr_y, hold),
            "test": self._generate_examples(te_x, te_y, np.arange(te_y.size)),
        }

    def _generate_examples(self, images, labels, rows):
        for r in rows:
            r = int(r)
            yield r, {"image": images[r][..., None], "label": int(labels[r]), "index": r}


def build_fashion_mnist_tfds(data_dir: os.PathLike | None = None, n_valid: int = 5000,
                             seed: int = 0, source_dir: os.PathLike | None = None
                             ) -> FashionMnistPackaged:
    """The prepared builder (built on first use) under ``data_dir`` (default
    ``$MLSD_JAX_CACHE/tfds``). ``source_dir``: read the four IDX files of that folder
    (:func:`~mlsd_jax.data.vision.idx_folder_paths`) instead of the packaged ones."""
    data_dir = pathlib.Path(data_dir) if data_dir else cache_dir() / "tfds"
    config = _config(n_valid, seed, source_dir)
    if config.name in FashionMnistPackaged.builder_configs:  # a listed config goes by its name
        config = config.name
    builder = FashionMnistPackaged(data_dir=str(data_dir), config=config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
    return builder


def tfds_arrays(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    """One split as numpy arrays: ``image`` uint8 ``[n, 28, 28, 1]``, ``label``, ``index``."""
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
