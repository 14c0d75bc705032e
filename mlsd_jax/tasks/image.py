"""Image classification: real images -> on-device augmentation -> ResNet / ViT -> accuracy, top-k;
composed multi-label mosaics -> mAP. Served from encoded image bytes.

Data (``image/data``): Fashion-MNIST (default; 55,000 train / 5,000 stratified validation /
10,000 test, read through the local tensorflow-datasets builder
:mod:`mlsd_jax.data.vision_tfds` or straight from the IDX files with ``data.reader=idx``),
scikit-learn's digits (the smoke set), or ``mosaics``: 2x2 mosaics of real Fashion-MNIST
images of one split with the set of their classes as tags (composed here, labelled so in
``results.json``), a multi-label problem scored by mean average precision.

Model: :class:`ImageClassifier` wraps a backbone from :mod:`mlsd_jax.models.vision` (the
``image/model`` group: ResNet-20/18/34/50, ViT). It takes the uint8 images as stored, augments
them on device in training (random translation, flips, rotation, random erasing:
:mod:`mlsd_jax.features.augment`, with the ``augment`` random stream), normalises with the
training split's mean and standard deviation (fitted constants) and returns logits; BatchNorm
statistics are model state, updated in training and frozen in evaluation.

Loss: softmax cross-entropy with ``task.label_smoothing`` (single label) or sigmoid binary
cross-entropy (multi-label). Metrics on whole splits: accuracy and top-k accuracy (single
label, ``accuracy`` drives early stopping), per-class AP and their mean (multi-label, ``map``).

Serving: ``serving_default`` takes ``image_bytes`` (PNG or JPEG, any size, colour or gray, one
string per image) and decodes, converts to gray, resizes and rounds inside the SavedModel
(:func:`mlsd_jax.data.vision.tf_decode_image_bytes`; the same steps in numpy on the host
path); ``pixels`` takes uint8 ``[batch, H, W, 1]`` arrays. Outputs: ``probs``, ``class_id``,
``label`` (the class name), ``top_k_ids`` / ``top_k_probs`` / ``top_k_labels``.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlsd_jax.data import vision
from mlsd_jax.errors import ConfigError
from mlsd_jax.features.augment import AugmentConfig, augment
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.tasks.base import Serving, Signature, Task, split_scorer


class ImageClassifier(nn.Module):
    """uint8 images ``[B, H, W, C]`` (video ``[B, T, H, W, C]``) -> augment (training) ->
    ``(x - mean) / std`` -> ``backbone`` -> logits ``[B, num_classes]``."""

    backbone: nn.Module
    augment: AugmentConfig = AugmentConfig()

    @nn.compact
    def __call__(self, images, mean, std, *, train: bool = False):
        x = images
        if train and self.augment.active:
            labels = jnp.zeros((x.shape[0],), jnp.int32)  # read only for flip_classes (unset)
            x = augment(self.make_rng("augment"), x, labels, self.augment)
        x = (x.astype(jnp.float32) - mean) / std
        return self.backbone(x, train=train)


# ------------------------------------------------------------------------------------- data
def load_data(data_cfg: Mapping[str, Any], seed: int = 0) -> dict:
    """``{"train": (x, y), "valid": ..., "test": ..., "class_names", "info", "multilabel"}``.

    ``x`` uint8 ``[n, H, W]``; ``y`` int32 class ids, or uint8 multi-hot ``[n, C]`` for mosaics.
    """
    name = data_cfg.get("name")
    split_seed = int(data_cfg.get("split_seed", 0))
    if name in ("fashion_mnist", "mosaics"):
        n_valid = int(data_cfg.get("n_valid", 5000))
        reader = data_cfg.get("reader", "tfds")
        if reader == "tfds":
            from mlsd_jax.data.vision_tfds import build_fashion_mnist_tfds, tfds_arrays

            builder = build_fashion_mnist_tfds(data_cfg.get("tfds_dir") or None, n_valid=n_valid,
                                               seed=split_seed)
            parts = {s: tfds_arrays(builder, t) for s, t in
                     (("train", "train"), ("valid", "validation"), ("test", "test"))}
            splits = {s: (p["image"][..., 0], p["label"].astype(np.int32)) for s, p in parts.items()}
            names = tuple(builder.info.features["label"].names)
            info = dict(name="fashion_mnist", real=True, reader="tensorflow-datasets "
                        f"{builder.name}/{builder.builder_config.name}",
                        source="Fashion-MNIST, Zalando Research (MIT)",
                        split=f"valid: {n_valid} stratified from train, seed {split_seed}; "
                              f"test: t10k", sizes={s: int(v[1].size) for s, v in splits.items()})
        elif reader == "idx":
            f = vision.load_fashion_mnist(n_valid=n_valid, seed=split_seed)
            splits = {s: f.split(s) for s in ("train", "valid", "test")}
            names, info = f.class_names, dict(f.info, reader="idx")
        else:
            raise ConfigError(f"data.reader={reader!r}: expected 'tfds' or 'idx'")
    elif name == "digits":
        d = vision.load_digits_splits(seed=split_seed)
        splits = {s: d.split(s) for s in ("train", "valid", "test")}
        names, info = d.class_names, dict(d.info)
    else:
        raise ConfigError(f"data.name={name!r}: expected 'fashion_mnist', 'digits' or 'mosaics'")
    limit = data_cfg.get("max_train")
    if limit:
        x, y = splits["train"]
        splits["train"] = (x[:int(limit)], y[:int(limit)])
        info["sizes"] = dict(info.get("sizes", {}), train=int(min(len(y), int(limit))))
    out = dict(splits, class_names=tuple(names), info=info, multilabel=False)
    if name == "mosaics":
        sizes = data_cfg.get("mosaics", {}) or {}
        for i, s in enumerate(("train", "valid", "test")):
            x, y = splits[s]
            n = int(sizes.get(s, {"train": 30000, "valid": 3000, "test": 5000}[s]))
            m = vision.make_mosaics(x, y, n, seed=split_seed * 1000 + 17 + i, split=s,
                                    num_classes=len(names))
            out[s] = (m.images, m.tags)
        out["multilabel"] = True
        out["info"] = dict(name="fashion_mnist_mosaics", real_images=True, composed=True,
                           source=info.get("source"), rule=m.info["rule"],
                           sizes={s: int(out[s][1].shape[0]) for s in ("train", "valid", "test")})
    return out


def fit_normalisation(images: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and standard deviation of the training pixels (scalars, float32)."""
    x = np.asarray(images, np.float64)
    return {"mean": np.float32(x.mean()), "std": np.float32(max(x.std(), 1e-6))}


# ---------------------------------------------------------------------------------- forward
def forward(apply, consts, inputs, *, train: bool, multilabel: bool = False, top_k: int = 3):
    """uint8 images -> logits, probabilities and (inference) the top-k classes."""
    logits = apply(inputs["image"], consts["mean"], consts["std"], train=train)
    probs = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)
    out = {"logits": logits, "probs": probs}
    if not train:
        k = min(int(top_k), logits.shape[-1])
        # a stable sort rather than lax.top_k: the SavedModel's XLA cannot read top_k's
        # composite op; ties go to the lower class id, as argmax does
        top_i = jnp.argsort(-probs, axis=-1, stable=True)[:, :k]
        top_p = jnp.take_along_axis(probs, top_i, axis=-1)
        out.update(class_id=jnp.argmax(logits, axis=-1).astype(jnp.int32),
                   top_k_ids=top_i.astype(jnp.int32), top_k_probs=top_p)
    return out


def loss_fn(outputs, batch, *, multilabel: bool, label_smoothing: float):
    logits = outputs["logits"].astype(jnp.float32)
    if multilabel:
        y = batch["label"].astype(jnp.float32)
        loss = optax.sigmoid_binary_cross_entropy(logits, y).mean(axis=-1)
    else:
        y = jax.nn.one_hot(batch["label"], logits.shape[-1])
        if label_smoothing:
            y = optax.smooth_labels(y, label_smoothing)
        loss = optax.softmax_cross_entropy(logits, y)
    return loss.mean(), {}


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision as ``sklearn.metrics.average_precision_score`` computes it (step-wise
    precision at each distinct score, weighted by the recall gained); nan without positives."""
    s = np.asarray(scores, np.float64).reshape(-1)
    y = np.asarray(positive).reshape(-1) > 0
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last row of each score group
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1)
    recall_gain = np.diff(np.concatenate([[0], tp])) / y.sum()
    return float(np.sum(precision * recall_gain))


def multilabel_report(probs: np.ndarray, tags: np.ndarray, class_names) -> dict[str, float]:
    """Per-class AP, their mean (``map``, macro) and the micro AP over all (row, class) pairs."""
    ap = [average_precision(probs[:, c], tags[:, c]) for c in range(tags.shape[1])]
    out = {"map": float(np.nanmean(ap)),
           "map_micro": average_precision(probs.reshape(-1), tags.reshape(-1))}
    out.update({f"ap/{n}": float(a) for n, a in zip(class_names, ap)})
    return out


# ---------------------------------------------------------------------------------- serving
def signature_outputs(class_names, multilabel: bool = False):
    """``(outputs, lookups)`` of a classifier signature: probabilities, the class id and the
    top-k classes, with their class names looked up (shared by the image and video tasks)."""
    names = tuple(class_names)
    kind = "independent P(class present) (multi-label)" if multilabel else "softmax probabilities"
    outputs = {"probs": f"float32 [batch, {len(names)}]: {kind}, classes in the order of "
                        f"the model card's class_names",
               "class_id": "int32 [batch]: the highest-scoring class",
               "label": "string [batch]: its class name",
               "top_k_ids": "int32 [batch, k]: the k highest-scoring classes, best first",
               "top_k_probs": "float32 [batch, k]: their probabilities",
               "top_k_labels": "string [batch, k]: their class names"}
    lookups = {"label": ("class_id", names), "top_k_labels": ("top_k_ids", names)}
    return outputs, lookups


def _signatures(fwd, image_shape, class_names, multilabel: bool):
    h, w, c = image_shape
    outputs, lookups = signature_outputs(class_names, multilabel)

    def predict(apply, consts, x):
        return fwd(apply, consts, x, train=False)

    encoded = {"image": (("batch", h, w, c), np.uint8)}

    def encode_np(raw):
        data = np.asarray(raw["image_bytes"], dtype=object).reshape(-1)
        return {"image": np.stack([vision.decode_image_bytes(
            b.encode("utf-8", "surrogateescape") if isinstance(b, str) else b, (h, w))
            for b in data])}

    def encode_tf(raw):
        import tensorflow as tf

        return {"image": tf.map_fn(lambda b: vision.tf_decode_image_bytes(b, (h, w)),
                                   raw["image_bytes"],
                                   fn_output_signature=tf.TensorSpec((h, w, c), tf.uint8))}

    by_bytes = Signature(inputs={"image_bytes": (("batch",), np.str_)}, encoded=encoded,
                         outputs=outputs, predict=predict, encode_np=encode_np,
                         encode_tf=encode_tf, lookups=lookups)
    by_pixels = Signature(inputs=encoded, outputs=outputs, predict=predict, lookups=lookups)
    return {"serving_default": by_bytes, "pixels": by_pixels}


def _model(cfg: Mapping[str, Any], num_classes: int) -> ImageClassifier:
    import hydra

    backbone = hydra.utils.instantiate(cfg["model"], num_classes=num_classes)
    aug = AugmentConfig.from_mapping(cfg["task"].get("augment") or {})
    if aug.flip_classes is not None:
        raise ConfigError("task.augment.flip_classes: not available here (augmentation runs in "
                          "the model, which does not see labels); expected null, or flip: false "
                          "for data whose classes must not be mirrored")
    return ImageClassifier(backbone, aug)


def serving(cfg: Mapping[str, Any], features) -> Serving:
    """Model, forward and the image-bytes / pixels signatures from config and the card alone."""
    names = tuple(features["class_names"])
    multilabel = bool(features.get("multilabel", False))
    fwd = functools.partial(forward, multilabel=multilabel, top_k=int(cfg["task"].get("top_k", 3)))
    model = _model(cfg, len(names))
    return Serving(model=model, forward=fwd,
                   signatures=_signatures(fwd, tuple(features["image_shape"]), names, multilabel))


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 ``[H, W]`` or ``[H, W, 1]`` -> PNG bytes (what a client would send)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8).reshape(image.shape[0], image.shape[1])).save(
        buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ build
def batches_and_loss(data: Mapping[str, Any], tcfg, tr, *, multilabel: bool = False):
    """What the image and video tasks build alike from in-memory ``data`` splits: the loss
    (label smoothing checked), the seeded grain training stream, whole-split evaluation
    batches and one example batch. Returns ``(loss_fn, train_batches, eval_splits, example)``."""
    smoothing = float(tcfg.get("label_smoothing", 0.0))
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"task.label_smoothing={smoothing}: expected a number in [0, 1)")
    bs, ebs = int(tr["batch_size"]), int(tr["eval_batch_size"])
    train_x, train_y = data["train"]

    def train_batches(seed: int, start_step: int):
        return vision.train_batches(train_x, train_y, batch_size=bs, seed=seed,
                                    start_step=start_step)

    eval_splits = {s: functools.partial(vision.eval_batches, *data[s], batch_size=ebs)
                   for s in ("train", "valid", "test")}
    example = next(iter(vision.eval_batches(*data["valid"], batch_size=bs)))
    return (functools.partial(loss_fn, multilabel=multilabel, label_smoothing=smoothing),
            train_batches, eval_splits, {"image": example["image"], "label": example["label"]})


def example_weight(batch):
    """1 per real row (training batches have no ``weight``), the batch's weights otherwise."""
    return batch.get("weight", jnp.ones(batch["label"].shape[:1], jnp.float32))


def build_image_task(cfg) -> Task:
    data_cfg, tcfg, tr = cfg["data"], cfg["task"], cfg["trainer"]
    data = load_data(data_cfg, int(cfg.get("seed", 0)))
    multilabel = bool(data["multilabel"])
    names = data["class_names"]
    train_x = data["train"][0]
    image_shape = (int(train_x.shape[1]), int(train_x.shape[2]), 1)
    consts = fit_normalisation(train_x)
    features = {"class_names": list(names), "image_shape": list(image_shape),
                "multilabel": multilabel, "normalisation": {k: float(v) for k, v in consts.items()}}
    srv = serving(cfg, features)
    top_k = int(tcfg.get("top_k", 3))
    loss, train_batches, eval_splits, example_batch = batches_and_loss(data, tcfg, tr,
                                                                       multilabel=multilabel)
    evaluator, metrics = None, {}
    if multilabel:
        scores = split_scorer(srv.model, srv.forward, ("image",), eval_splits, output="probs",
                              task="image")

        def evaluator(trainer, state, split):
            probs, cols = scores(trainer, state, split)
            return multilabel_report(probs, cols["label"], names)
        target = "map"
    else:
        metrics = {"accuracy": ms.Accuracy(pred="logits"),
                   f"top{top_k}_accuracy": ms.TopKAccuracy(pred="logits", k=top_k)}
        target = tcfg.get("target_metric", "accuracy")
    rows = data["test"][0][:4]
    examples = {"serving_default": {"image_bytes": np.asarray([png_bytes(r) for r in rows],
                                                              dtype=object)},
                "pixels": {"image": rows[..., None]}}
    return Task(
        name="image", model=srv.model, consts=consts, forward=srv.forward,
        loss_fn=loss, metrics=metrics, example_weight=example_weight,
        train_batches=train_batches, eval_splits=eval_splits, example_batch=example_batch,
        input_keys=("image",), signatures=srv.signatures, serving="mlsd_jax.tasks.image:serving",
        target_metric=target, target_mode="max", features=features,
        serving_examples=examples, evaluator=evaluator,
        info=dict(data["info"], class_names=list(names), multilabel=multilabel,
                  image_shape=list(image_shape)))
