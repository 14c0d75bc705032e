"""Video classification on SYNTHETIC clips of real images: uint8 clips -> on-device augmentation
-> (2+1)D ResNet or frame pooling -> accuracy, top-k accuracy.

Data (``video/data``): ``moving_fashion_mnist`` -- synthetic Moving-MNIST-style clips made by
:func:`mlsd_jax.data.vision.make_moving_clips` from real Fashion-MNIST images: train clips from
the training images, valid clips from the validation images, test clips from the test images
(the image task's splits, :func:`mlsd_jax.tasks.image.load_data`), each split with its own
seed. One image bounces around a ``size`` x ``size`` frame for ``num_frames`` frames; a seeded
range of frames has a grey occluder over 60-80% of the object; the label is the image's class.
The clips are composed here (``results.json`` says ``synthetic: true``); the images are real.
``data.frames=middle`` keeps only frame ``T // 2`` of every clip (all splits): the single-frame
baseline of ``benchmarks/video_quality.py``.

Model: the image task's :class:`~mlsd_jax.tasks.image.ImageClassifier` (augmentation with one
transform per clip, normalisation with the training frames' mean and standard deviation) around
a video backbone (the ``video/model`` group): :class:`~mlsd_jax.models.vision.FramePool`
(default, chosen on validation accuracy: a ResNet per frame, mean-pooled over time) or
:class:`~mlsd_jax.models.vision.R2Plus1D` ((2+1)D convolutions). Loss, forward and metrics are the image task's (softmax cross-entropy with label
smoothing; accuracy, which drives early stopping on validation, and top-k accuracy).

Serving: ``serving_default`` takes uint8 ``frames [batch, T, H, W, 1]`` (the clip shape of
training) and returns ``probs``, ``class_id``, ``label`` (the class name), ``top_k_ids`` /
``top_k_probs`` / ``top_k_labels``. :func:`predict_video_file` is the host-side path from a
real video container: frames decoded with :func:`mlsd_jax.data.vision.read_video_frames`,
``T`` of them sampled evenly, converted to gray and resized as
:func:`mlsd_jax.data.vision.decode_image_bytes` does for images, then the bundle.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from mlsd_jax.data import vision
from mlsd_jax.errors import ConfigError
from mlsd_jax.metrics import streaming as ms
from mlsd_jax.tasks import image as im
from mlsd_jax.tasks.base import Serving, Signature, Task

FRAMES = ("all", "middle")
_SPLITS = ("train", "valid", "test")


# ------------------------------------------------------------------------------------- data
def load_data(data_cfg: Mapping[str, Any]) -> dict:
    """``{"train": (clips, labels), "valid": ..., "test": ..., "class_names", "info"}``;
    clips uint8 ``[n, T, S, S]`` (``T = 1`` with ``frames=middle``), labels int32."""
    name = data_cfg.get("name")
    if name != "moving_fashion_mnist":
        raise ConfigError(f"data.name={name!r}: expected 'moving_fashion_mnist'")
    frames = data_cfg.get("frames", "all")
    if frames not in FRAMES:
        raise ConfigError(f"data.frames={frames!r}: expected one of {list(FRAMES)}")
    T, size = int(data_cfg.get("num_frames", 8)), int(data_cfg.get("size", 32))
    if T < 1:
        raise ConfigError(f"data.num_frames={T}: expected a positive integer")
    if size < 28:
        raise ConfigError(f"data.size={size}: expected at least 28 (the Fashion-MNIST images)")
    base = im.load_data({"name": "fashion_mnist", "reader": data_cfg.get("reader", "idx"),
                         "tfds_dir": data_cfg.get("tfds_dir"),
                         "n_valid": int(data_cfg.get("n_valid", 5000)),
                         "split_seed": int(data_cfg.get("split_seed", 0))})
    counts = data_cfg.get("clips") or {}
    clip_seed = int(data_cfg.get("clip_seed", 0))
    out = {"class_names": base["class_names"]}
    occluded_middle = {}
    for i, s in enumerate(_SPLITS):
        if s not in counts or int(counts[s]) < 1:
            raise ConfigError(f"data.clips.{s}={counts.get(s)!r}: expected a positive number of "
                              f"clips")
        x, y = base[s]
        c = vision.make_moving_clips(x, y, int(counts[s]), seed=clip_seed * 1000 + 31 + i, split=s,
                                     num_frames=T, size=size,
                                     occlusion=bool(data_cfg.get("occlusion", True)))
        clips = c.frames[:, T // 2:T // 2 + 1] if frames == "middle" else c.frames
        out[s] = (np.ascontiguousarray(clips), c.labels)
        occluded_middle[s] = float(c.occluded[:, T // 2].mean())
    out["info"] = dict(
        name="moving_fashion_mnist", synthetic=True, real_images=True,
        source=base["info"].get("source"), image_split=base["info"].get("split"),
        rule=c.info["rule"], num_frames=T, size=size, frames=frames, clip_seed=clip_seed,
        frames_in_model=1 if frames == "middle" else T,
        occluded_middle_frame_share=occluded_middle,
        sizes={s: int(out[s][1].size) for s in _SPLITS})
    return out


def fit_normalisation(clips: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and standard deviation of every training pixel, as
    :func:`mlsd_jax.tasks.image.fit_normalisation` computes them, from a histogram of the uint8
    values (exact, without a float copy of the clips)."""
    counts = np.bincount(np.asarray(clips, np.uint8).reshape(-1), minlength=256).astype(np.float64)
    v = np.arange(256, dtype=np.float64)
    mean = (counts * v).sum() / counts.sum()
    var = (counts * (v - mean) ** 2).sum() / counts.sum()
    return {"mean": np.float32(mean), "std": np.float32(max(np.sqrt(var), 1e-6))}


# ---------------------------------------------------------------------------------- serving
def _signatures(fwd, clip_shape, class_names):
    t, h, w, c = clip_shape
    outputs, lookups = im.signature_outputs(class_names)

    def predict(apply, consts, x):
        return fwd(apply, consts, {"image": x["frames"]}, train=False)

    return {"serving_default": Signature(
        inputs={"frames": (("batch", t, h, w, c), np.uint8)}, outputs=outputs, predict=predict,
        lookups=lookups)}


def serving(cfg: Mapping[str, Any], features) -> Serving:
    """Model, forward and the frames signature from config and the card alone."""
    names = tuple(features["class_names"])
    fwd = functools.partial(im.forward, multilabel=False, top_k=int(cfg["task"].get("top_k", 3)))
    return Serving(model=im._model(cfg, len(names)), forward=fwd,
                   signatures=_signatures(fwd, tuple(features["clip_shape"]), names))


def clip_from_frames(frames: np.ndarray, features: Mapping[str, Any]) -> np.ndarray:
    """Decoded frames ``[n, H, W]``, ``[n, H, W, 1]`` or RGB ``[n, H, W, 3]`` (uint8, any size,
    any count) -> the model's clip uint8 ``[T, S, S, 1]``: ``T`` frames sampled evenly
    (``round(linspace(0, n - 1, T))``; a model trained on the middle frame takes frame
    ``n // 2``), RGB turned gray with :func:`~mlsd_jax.data.vision.rgb_to_gray`, another size
    resized with :func:`~mlsd_jax.data.vision.resize_bilinear` and rounded, as
    :func:`~mlsd_jax.data.vision.decode_image_bytes` does for images."""
    x = np.asarray(frames)
    if x.dtype != np.uint8:
        raise vision.VisionFormatError(f"frames: dtype {x.dtype}; expected uint8")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
        raise vision.VisionFormatError(f"frames: shape {x.shape}; expected [n, H, W], "
                                       f"[n, H, W, 1] or [n, H, W, 3] with n >= 1")
    t, h, w, _ = (int(d) for d in features["clip_shape"])
    if features.get("frames", "all") == "middle":
        idx = np.asarray([x.shape[0] // 2])
    else:
        idx = np.rint(np.linspace(0, x.shape[0] - 1, t)).astype(np.int64)
    x = x[idx]
    if x.shape[-1] == 3:
        x = vision.rgb_to_gray(x)
    if x.shape[1:3] != (h, w):
        x = np.stack([np.clip(np.round(vision.resize_bilinear(f, h, w)), 0, 255).astype(np.uint8)
                      for f in x])
    return np.ascontiguousarray(x)


def predict_video_file(bundle_or_path, path) -> dict[str, Any]:
    """Classifies a video file with an exported video model (a bundle or its folder).

    The frames are decoded with :func:`mlsd_jax.data.vision.read_video_frames` (the container's
    luma plane: gray), sampled and resized by :func:`clip_from_frames`, and scored by the
    bundle's ``serving_default``. Returns ``label`` (class name), ``class_id``, ``probs``
    (``{class name: probability}``), ``top_k`` (``[(class name, probability), ...]``) and the
    ``frames`` the model saw. Raises :class:`~mlsd_jax.data.vision.VisionFormatError` for a
    missing or undecodable file.
    """
    from mlsd_jax.export import load_bundle

    bundle = bundle_or_path if hasattr(bundle_or_path, "predict") else load_bundle(bundle_or_path)
    features = bundle.card["features"]
    clip = clip_from_frames(vision.read_video_frames(path), features)
    out = bundle.predict({"frames": clip[None]})
    names = list(features["class_names"])
    probs = np.asarray(out["probs"][0], np.float64)
    return {"label": str(out["label"][0]), "class_id": int(out["class_id"][0]),
            "probs": {n: float(p) for n, p in zip(names, probs)},
            "top_k": [(str(n), float(p)) for n, p in zip(out["top_k_labels"][0],
                                                         out["top_k_probs"][0])],
            "frames": clip}


# ------------------------------------------------------------------------------------ build
def build_video_task(cfg) -> Task:
    data_cfg, tcfg, tr = cfg["data"], cfg["task"], cfg["trainer"]
    data = load_data(data_cfg)
    names = data["class_names"]
    train_x = data["train"][0]
    clip_shape = (*(int(d) for d in train_x.shape[1:4]), 1)
    consts = fit_normalisation(train_x)
    features = {"class_names": list(names), "clip_shape": list(clip_shape),
                "frames": data["info"]["frames"],
                "normalisation": {k: float(v) for k, v in consts.items()}}
    srv = serving(cfg, features)
    top_k = int(tcfg.get("top_k", 3))
    loss, train_batches, eval_splits, example_batch = im.batches_and_loss(data, tcfg, tr)
    metrics = {"accuracy": ms.Accuracy(pred="logits"),
               f"top{top_k}_accuracy": ms.TopKAccuracy(pred="logits", k=top_k)}
    return Task(
        name="video", model=srv.model, consts=consts, forward=srv.forward,
        loss_fn=loss, metrics=metrics, example_weight=im.example_weight,
        train_batches=train_batches, eval_splits=eval_splits, example_batch=example_batch,
        input_keys=("image",), signatures=srv.signatures, serving="mlsd_jax.tasks.video:serving",
        target_metric=tcfg.get("target_metric", "accuracy"), target_mode="max",
        features=features,
        serving_examples={"serving_default": {"frames": data["test"][0][:4][..., None]}},
        info=dict(data["info"], class_names=list(names), clip_shape=list(clip_shape)))
