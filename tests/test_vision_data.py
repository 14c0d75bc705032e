"""Image and video data: the Fashion-MNIST IDX reader on the packaged files (counts, known
labels, the stratified validation split) and on broken files, the digits smoke set, the grain
batches (seeded, resumable, the same order as record-level shuffling, padded eval batches), the
TFDS builder giving the same arrays as the IDX path, composed mosaics, synthetic clips written
to MP4 and read back, and PNG/JPEG decoding in numpy equal to TensorFlow's ops within a grey
level."""
import gzip
import io

import numpy as np
import pytest

from mlsd_jax.data import vision as V


@pytest.fixture(scope="module")
def fashion():
    return V.load_fashion_mnist()


# ------------------------------------------------------------------------------ IDX + splits
def test_fashion_mnist_from_the_package_has_the_published_counts(fashion):
    f = fashion
    assert f.train_x.shape == (55_000, 28, 28) and f.valid_x.shape == (5_000, 28, 28)
    assert f.test_x.shape == (10_000, 28, 28) and f.train_x.dtype == np.uint8
    assert f.train_y.dtype == np.int32 and len(f.class_names) == 10
    assert f.class_names[0] == "T-shirt/top" and f.class_names[9] == "Ankle boot"
    # 6,000 training and 1,000 test images per class; validation is stratified: 500 each.
    np.testing.assert_array_equal(np.bincount(f.valid_y), [500] * 10)
    np.testing.assert_array_equal(np.bincount(f.train_y), [5_500] * 10)
    np.testing.assert_array_equal(np.bincount(f.test_y), [1_000] * 10)
    # train and valid partition the 60,000 rows of the training file.
    both = np.concatenate([f.train_index, f.valid_index])
    np.testing.assert_array_equal(np.sort(both), np.arange(60_000))
    # The first training images are an ankle boot and two T-shirts (the file's known order).
    raw = V.read_idx(V.fashion_mnist_paths()[("train", "labels-idx1")])
    np.testing.assert_array_equal(raw[:4], [9, 0, 0, 3])
    assert 70 < f.train_x.mean() < 76  # Fashion-MNIST's mean pixel is 0.286 * 255 = 72.9
    assert f.info["real"] and "MIT" in f.info["source"]


def test_validation_split_is_seeded(fashion):
    again = V.load_fashion_mnist(seed=0)
    other = V.load_fashion_mnist(n_valid=1_000, seed=1)
    np.testing.assert_array_equal(again.valid_index, fashion.valid_index)
    assert other.valid_x.shape[0] == 1_000
    assert not np.isin(other.valid_index, fashion.valid_index).all()
    np.testing.assert_array_equal(np.bincount(other.valid_y), [100] * 10)


def test_stratified_holdout_rounds_by_largest_remainder():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1)
    keep, hold = V.stratified_holdout(labels, 5, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[hold], minlength=3), [4, 1, 0])
    assert np.intersect1d(keep, hold).size == 0 and keep.size + hold.size == 10
    with pytest.raises(ValueError, match="n_holdout=11"):
        V.stratified_holdout(labels, 11, seed=0)


def test_idx_reader_rejects_broken_files(tmp_path, fashion):
    imgs, labs = fashion.test_x[:50], fashion.test_y[:50].astype(np.uint8)
    ip, lp = V.write_idx(tmp_path / "i.gz", imgs), V.write_idx(tmp_path / "l", labs)
    got_x, got_y = V.read_idx_pair(ip, lp)
    np.testing.assert_array_equal(got_x, imgs)
    np.testing.assert_array_equal(got_y, labs)

    raw = gzip.decompress(ip.read_bytes())
    (tmp_path / "trunc.gz").write_bytes(ip.read_bytes()[:-100])
    with pytest.raises(V.VisionFormatError, match=r"trunc.gz: gzip stream: .*truncated"):
        V.read_idx(tmp_path / "trunc.gz")
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(V.VisionFormatError, match=r"short: data: 39195 bytes .*truncated.*expected 39200 for dimensions \(50, 28, 28\)"):
        V.read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(raw + b"\0")
    with pytest.raises(V.VisionFormatError, match="trailing bytes"):
        V.read_idx(tmp_path / "long")
    (tmp_path / "magic").write_bytes(b"\x89PNG" + raw[4:])
    with pytest.raises(V.VisionFormatError, match="magic: magic number: first bytes 89504e47"):
        V.read_idx(tmp_path / "magic")
    (tmp_path / "float").write_bytes(raw[:2] + b"\x0d" + raw[3:])
    with pytest.raises(V.VisionFormatError, match=r"type code: 0x0d; expected 0x08"):
        V.read_idx(tmp_path / "float")
    with pytest.raises(V.VisionFormatError, match="dimension count: 1; expected 3"):
        V.read_idx_pair(lp, lp)  # labels where images belong
    V.write_idx(tmp_path / "l49", labs[:49])
    with pytest.raises(V.VisionFormatError, match="l49: count: 49 labels; expected 50"):
        V.read_idx_pair(ip, tmp_path / "l49")
    bad = labs.copy()
    bad[7] = 10
    V.write_idx(tmp_path / "lbad", bad)
    with pytest.raises(V.VisionFormatError, match="lbad: label 7: 10; expected 0..9"):
        V.read_idx_pair(ip, tmp_path / "lbad")
    V.write_idx(tmp_path / "small", imgs[:, :20, :20])
    with pytest.raises(V.VisionFormatError, match="images of 20x20; expected 28x28"):
        V.read_idx_pair(tmp_path / "small", lp)


def test_digits_smoke_set_is_small_real_and_stratified():
    d = V.load_digits_splits()
    assert d.train_x.shape[1:] == (8, 8) and d.train_x.dtype == np.uint8
    assert d.train_y.size + d.valid_y.size + d.test_y.size == 1_797
    assert d.test_y.size == 360 and d.valid_y.size == 180 and d.train_x.max() == 255
    assert np.bincount(d.test_y).min() >= 35  # ~36 of each digit
    rows = np.concatenate([d.train_index, d.valid_index, d.test_index])
    np.testing.assert_array_equal(np.sort(rows), np.arange(1_797))


# ---------------------------------------------------------------------------------- grain
def test_grain_train_batches_are_seeded_epoch_permutations_and_resume():
    import grain

    n, b = 100, 20
    images = (np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8))
    labels = np.arange(n)  # label = row, to see the order
    it = V.train_batches(images, labels, batch_size=b, seed=7)
    batches = [next(it) for _ in range(12)]
    assert batches[0]["image"].shape == (b, 4, 4, 1) and batches[0]["image"].dtype == np.uint8
    assert batches[0]["label"].dtype == np.int32
    order = np.concatenate([x["label"] for x in batches])
    for e in range(2):  # each epoch (5 batches) is a permutation of the rows, a new one each time
        np.testing.assert_array_equal(np.sort(order[e * n:(e + 1) * n]), np.arange(n))
    assert not np.array_equal(order[:n], order[n:2 * n])
    for x in batches:
        np.testing.assert_array_equal(x["image"][:, 0, 0, 0], x["label"])
    # The same order as shuffling the records themselves with grain.
    ref = (grain.MapDataset.source(V._ArraySource(images, labels)).shuffle(seed=7).repeat(None)
           .batch(b, drop_remainder=True))
    np.testing.assert_array_equal(np.concatenate([ref[s]["label"] for s in range(12)]), order)
    resumed = V.train_batches(images, labels, batch_size=b, seed=7, start_step=9, num_threads=0)
    np.testing.assert_array_equal(next(resumed)["label"], batches[9]["label"])
    other = next(V.train_batches(images, labels, batch_size=b, seed=8))
    assert not np.array_equal(other["label"], batches[0]["label"])


def test_eval_batches_pad_the_last_batch_with_zero_weight(fashion):
    x, y = fashion.valid_x[:70], fashion.valid_y[:70]
    out = list(V.eval_batches(x, y, batch_size=32))
    assert [o["image"].shape for o in out] == [(32, 28, 28, 1)] * 3
    w = np.concatenate([o["weight"] for o in out])
    np.testing.assert_array_equal(w, [1.0] * 70 + [0.0] * 26)
    imgs = np.concatenate([o["image"] for o in out])
    np.testing.assert_array_equal(imgs[:70, ..., 0], x)
    assert not imgs[70:].any() and not np.concatenate([o["label"] for o in out])[70:].any()
    exact = list(V.eval_batches(x[:64], y[:64], batch_size=32))
    assert len(exact) == 2 and all(o["weight"].all() for o in exact)


# ----------------------------------------------------------------------------------- TFDS
def _check_tfds_equals_idx(builder, splits):
    from mlsd_jax.data.vision_tfds import tfds_arrays

    for tf_name, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
        got = tfds_arrays(builder, tf_name)
        x, y = splits.split(name)
        assert got["image"].shape == (*x.shape, 1) and got["image"].dtype == np.uint8
        np.testing.assert_array_equal(got["image"][..., 0], x)
        np.testing.assert_array_equal(got["label"], y)
        np.testing.assert_array_equal(got["index"], getattr(splits, f"{name}_index"))


def test_tfds_builder_on_an_idx_folder_equals_the_direct_path(tmp_path, fashion):
    tfds = pytest.importorskip("tensorflow_datasets")
    from mlsd_jax.data import vision_tfds as VT

    src = tmp_path / "idx"
    src.mkdir()  # real images: the first 1,200 training and 300 test rows of Fashion-MNIST
    paths = V.fashion_mnist_paths()
    tr_x, tr_y = V.read_idx_pair(paths[("train", "images-idx3")], paths[("train", "labels-idx1")])
    V.write_idx(src / "train-images-idx3-ubyte.gz", tr_x[:1200])
    V.write_idx(src / "train-labels-idx1-ubyte.gz", tr_y[:1200].astype(np.uint8))
    V.write_idx(src / "t10k-images-idx3-ubyte", fashion.test_x[:300])
    V.write_idx(src / "t10k-labels-idx1-ubyte", fashion.test_y[:300].astype(np.uint8))
    builder = VT.build_fashion_mnist_tfds(tmp_path / "tfds", n_valid=200, seed=5, source_dir=src)
    direct = V.load_fashion_mnist(n_valid=200, seed=5, paths=V.idx_folder_paths(src))
    _check_tfds_equals_idx(builder, direct)
    assert builder.info.features["label"].names == list(V.FASHION_MNIST_CLASSES)
    assert builder.info.splits["validation"].num_examples == 200
    # A tfds user sees a normal prepared dataset.
    again = tfds.builder("fashion_mnist_packaged", data_dir=str(tmp_path / "tfds"),
                         config=builder.builder_config.name)
    assert again.is_prepared() and again.info.splits["test"].num_examples == 300
    with pytest.raises(V.VisionFormatError, match="train-images-idx3-ubyte\\[.gz\\]: not found"):
        V.idx_folder_paths(tmp_path)


@pytest.mark.slow
def test_tfds_builder_on_the_packaged_files_equals_the_direct_path(fashion):
    from mlsd_jax.data import vision_tfds as VT

    builder = VT.build_fashion_mnist_tfds()  # under $MLSD_JAX_CACHE/tfds
    assert builder.builder_config.name == "valid5000_seed0"
    _check_tfds_equals_idx(builder, fashion)


# -------------------------------------------------------------------------------- mosaics
def test_mosaics_are_composed_from_one_split_with_multi_hot_tags(fashion):
    x, y = fashion.test_x, fashion.test_y
    m = V.make_mosaics(x, y, 300, seed=1, split="test")
    assert m.images.shape == (300, 56, 56) and m.tags.shape == (300, 10)
    assert m.info["composed"] and m.info["split"] == "test"
    for i in (0, 123, 299):
        s = m.sources[i]
        assert len(set(s)) == 4
        np.testing.assert_array_equal(m.images[i, :28, :28], x[s[0]])
        np.testing.assert_array_equal(m.images[i, :28, 28:], x[s[1]])
        np.testing.assert_array_equal(m.images[i, 28:, :28], x[s[2]])
        np.testing.assert_array_equal(m.images[i, 28:, 28:], x[s[3]])
        np.testing.assert_array_equal(np.flatnonzero(m.tags[i]), np.unique(y[s]))
    assert 1 <= m.tags.sum(1).min() and m.tags.sum(1).max() <= 4
    assert (m.tags.sum(1) >= 3).mean() > 0.5  # 4 draws from 10 balanced classes
    again = V.make_mosaics(x, y, 300, seed=1, split="test")
    np.testing.assert_array_equal(again.images, m.images)
    assert not np.array_equal(V.make_mosaics(x, y, 300, seed=2, split="test").sources, m.sources)


# ---------------------------------------------------------------------------------- clips
def test_moving_clips_bounce_keep_the_class_and_hide_a_frame_range(fashion):
    x, y = fashion.train_x, fashion.train_y
    c = V.make_moving_clips(x, y, 40, seed=3, split="train")
    assert c.frames.shape == (40, 16, 64, 64) and c.frames.dtype == np.uint8
    assert c.info["synthetic"] and c.info["split"] == "train"
    np.testing.assert_array_equal(c.labels, y[c.sources])
    assert c.positions.min() >= 0 and c.positions.max() <= 64 - 28
    step = np.abs(np.diff(c.positions, axis=1)).max()
    assert 1 <= step <= 5  # 2-4 px a frame, rounded
    moved = np.abs(c.positions[:, -1] - c.positions[:, 0]).sum(1)
    assert (moved > 0).all()
    runs = c.occluded.sum(1)
    assert runs.min() >= 4 and runs.max() <= 8  # T/4 .. T/2 frames
    for i in range(40):
        img = x[c.sources[i]]
        hidden = np.flatnonzero(c.occluded[i])
        np.testing.assert_array_equal(hidden, np.arange(hidden[0], hidden[-1] + 1))  # one range
        for t in range(16):
            r, k = c.positions[i, t]
            crop = c.frames[i, t, r:r + 28, k:k + 28]
            if c.occluded[i, t]:
                frac = (crop == 128).mean()
                assert 0.5 < frac < 0.85 and not np.array_equal(crop, img)
            else:
                np.testing.assert_array_equal(crop, img)
                assert c.frames[i, t].sum() == img.sum()  # nothing else in the frame
    again = V.make_moving_clips(x, y, 40, seed=3, split="train")
    np.testing.assert_array_equal(again.frames, c.frames)


def test_video_round_trip_through_an_mp4_file(tmp_path, fashion):
    iio = pytest.importorskip("imageio.v3")
    c = V.make_moving_clips(fashion.test_x, fashion.test_y, 2, seed=0, split="test")
    path = V.write_video(tmp_path / "clip.mp4", c.frames[0], fps=8)
    assert path.read_bytes()[4:8] == b"ftyp"  # an MP4 container
    back = V.read_video_frames(path)
    assert back.shape == (16, 64, 64) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - c.frames[0]).max() <= 1  # lossless H.264 (exact in practice)
    other = iio.imread(path, plugin="pyav")  # an independent reader sees the same frames
    assert other.shape[:3] == (16, 64, 64)
    assert np.abs(other[..., 0].astype(int) - c.frames[0]).max() <= 2
    eight = V.read_video_frames(path, num_frames=8)
    np.testing.assert_array_equal(eight, back[np.rint(np.linspace(0, 15, 8)).astype(int)])
    assert V.read_video_frames(path, num_frames=20).shape == (20, 64, 64)
    # Colour frames (three real images as R, G, B) come back within colour-conversion rounding.
    rgb = np.stack([c.frames[0], c.frames[1], c.frames[0][::-1]], axis=-1)
    V.write_video(tmp_path / "rgb.mp4", rgb)
    gray = V.read_video_frames(tmp_path / "rgb.mp4")
    want = V.rgb_to_gray(rgb)[..., 0].astype(int)
    assert np.abs(gray.astype(int) - want).max() <= 3


def test_corrupt_video_files_give_clear_errors(tmp_path, fashion):
    c = V.make_moving_clips(fashion.test_x, fashion.test_y, 1, seed=0, split="test")
    good = V.write_video(tmp_path / "good.mp4", c.frames[0]).read_bytes()
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])
    for name in ("noise.mp4", "cut.mp4"):
        with pytest.raises(V.VisionFormatError, match=rf"{name}: video: cannot be decoded .*expected a valid video"):
            V.read_video_frames(tmp_path / name)
    with pytest.raises(V.VisionFormatError, match="missing.mp4: file: not found"):
        V.read_video_frames(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="expected uint8"):
        V.write_video(tmp_path / "f.mp4", c.frames[0].astype(np.float32))


# -------------------------------------------------------------------------- image decoding
def _encode(array, fmt, **kw):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_palette(rgb):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "PNG")
    return buf.getvalue()


def test_resize_matches_tensorflow_bilinear():
    tf = pytest.importorskip("tensorflow")
    img = np.random.default_rng(0).uniform(0, 255, (37, 19, 1)).astype(np.float32)
    for h, w in ((28, 28), (11, 50), (37, 19)):
        want = tf.image.resize(img, (h, w), method="bilinear", antialias=False).numpy()
        np.testing.assert_allclose(V.resize_bilinear(img, h, w), want, atol=1e-3)
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(V.rgb_to_gray(rgb), tf.image.rgb_to_grayscale(rgb).numpy())


def test_decode_image_bytes_numpy_equals_tensorflow_within_one_level(fashion):
    tf = pytest.importorskip("tensorflow")
    x = fashion.test_x
    big = np.kron(x[0], np.ones((3, 2), np.uint8))  # 84x56, a real image at another size
    colour = np.stack([x[1], x[2], x[3]], axis=-1)  # three real images as R, G, B
    colour_big = np.kron(colour, np.ones((2, 2, 1), np.uint8))
    rgba = np.concatenate([colour, np.full((28, 28, 1), 200, np.uint8)], axis=-1)
    cases = {
        "png gray 28x28": _encode(x[4], "PNG"),
        "jpeg gray 28x28": _encode(x[5], "JPEG", quality=90),
        "png colour 28x28": _encode(colour, "PNG"),
        "jpeg colour 56x56": _encode(colour_big, "JPEG", quality=95),
        "png gray 84x56": _encode(big, "PNG"),
        "png gray 33x40": _encode(np.kron(x[6], np.ones((2, 2), np.uint8))[:33, 8:48], "PNG"),
        "png rgba": _encode(rgba, "PNG"),
        "png gray+alpha": _encode(np.stack([x[8], x[9]], axis=-1), "PNG"),
        "png 16-bit gray": _encode(x[7].astype(np.uint16) * 257, "PNG"),
        "png palette": _png_palette(colour),
    }
    for name, data in cases.items():
        got = V.decode_image_bytes(data)
        want = V.tf_decode_image_bytes(tf.constant(data)).numpy()
        assert got.shape == (28, 28, 1) and got.dtype == np.uint8, name
        assert want.shape == (28, 28, 1), name
        assert np.abs(got.astype(int) - want).max() <= 1, name
    np.testing.assert_array_equal(V.decode_image_bytes(cases["png gray 28x28"])[..., 0], x[4])
    np.testing.assert_array_equal(V.decode_image_bytes(cases["png 16-bit gray"])[..., 0], x[7])
    np.testing.assert_array_equal(V.decode_image_bytes(cases["png gray+alpha"])[..., 0], x[8])
    np.testing.assert_array_equal(V.decode_image_bytes(cases["png colour 28x28"]),
                                  V.rgb_to_gray(colour))
    assert np.abs(V.decode_image_bytes(cases["jpeg gray 28x28"])[..., 0].astype(int) - x[5]).mean() < 6
    # A 3x2 upscaled image resized back down is close to the original.
    assert np.abs(V.decode_image_bytes(cases["png gray 84x56"])[..., 0].astype(int) - x[0]).mean() < 12


def test_corrupt_image_bytes_give_clear_errors(fashion):
    png = _encode(fashion.test_x[0], "PNG")
    gif = _encode(fashion.test_x[0], "GIF")
    bad = {b"not an image at all": "cannot be decoded",
           png[: len(png) // 2]: "cannot be decoded",
           gif: "format GIF; expected PNG or JPEG",
           b"": "expected non-empty PNG or JPEG bytes"}
    for data, msg in bad.items():
        with pytest.raises(V.VisionFormatError, match=msg):
            V.decode_image_bytes(data)
