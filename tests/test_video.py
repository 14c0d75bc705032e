"""The video task on SYNTHETIC clips of real Fashion-MNIST images: seeded clip batches of the
right shapes, a debug run that trains, evaluates and exports, the video-file path agreeing with
the bundle on the same frames, clear errors for corrupt files and bad settings, and frame
pooling that ignores the order of the frames while the (2+1)D model does not."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.data import vision
from mlsd_jax.errors import ConfigError
from mlsd_jax.models import vision as vm
from mlsd_jax.tasks import video as vt
from tests.utils import compose_config

# Small clips keep the suite short: 4 frames of 30x30 (the 28x28 image moves by up to 2 px),
# on one device.
SMALL = ["+task=video", "data.num_frames=4", "data.size=30", "mesh.num_devices=1"]


@pytest.fixture(scope="module")
def small_cfg():
    return compose_config(SMALL)


@pytest.fixture(scope="module")
def small_data(small_cfg):
    return vt.load_data(small_cfg.data)


def test_clips_are_seeded_and_batches_have_clip_shapes(small_cfg, small_data):
    x, y = small_data["train"]
    assert x.shape == (64, 4, 30, 30) and x.dtype == np.uint8 and y.dtype == np.int32
    assert {s: small_data[s][0].shape[0] for s in ("valid", "test")} == {"valid": 32, "test": 32}
    assert small_data["info"]["synthetic"] and small_data["info"]["real_images"]
    again = vt.load_data(small_cfg.data)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(again[s][0], small_data[s][0])
    # the splits use their own seeds and source images
    assert not np.array_equal(small_data["valid"][0][:8], small_data["test"][0][:8])
    # the object moves: consecutive frames differ
    assert (x[:, 1:] != x[:, :-1]).any(axis=(2, 3)).mean() > 0.9

    a = next(vision.train_batches(x, y, batch_size=16, seed=3))
    b = next(vision.train_batches(x, y, batch_size=16, seed=3))
    c = next(vision.train_batches(x, y, batch_size=16, seed=4))
    assert a["image"].shape == (16, 4, 30, 30, 1) and a["image"].dtype == np.uint8
    assert a["label"].shape == (16,)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["label"], c["label"]) or not np.array_equal(a["image"], c["image"])
    # every batch row is one of the clips, with its label
    for img, lab in zip(a["image"][..., 0], a["label"]):
        hit = np.flatnonzero((x == img).all(axis=(1, 2, 3)))
        assert hit.size >= 1 and y[hit[0]] == lab
    ev = list(vision.eval_batches(*small_data["valid"], batch_size=20))
    assert [e["image"].shape for e in ev] == [(20, 4, 30, 30, 1)] * 2
    assert ev[1]["weight"].sum() == 12 and not ev[1]["image"][12:].any()


def test_middle_frame_option_keeps_frame_t_over_2(small_cfg, small_data):
    cfg = small_cfg.copy()
    cfg.data.frames = "middle"
    mid = vt.load_data(cfg.data)
    assert mid["train"][0].shape == (64, 1, 30, 30)
    np.testing.assert_array_equal(mid["test"][0][:, 0], small_data["test"][0][:, 2])
    np.testing.assert_array_equal(mid["test"][1], small_data["test"][1])


def test_bad_settings_name_the_field(small_cfg):
    cfg = small_cfg.copy()
    cfg.data.frames = "first"
    with pytest.raises(ConfigError, match="data.frames='first'"):
        vt.load_data(cfg.data)
    cfg.data.frames, cfg.data.size = "all", 20
    with pytest.raises(ConfigError, match="data.size=20"):
        vt.load_data(cfg.data)
    with pytest.raises(ValueError, match=r"expected images \[n, H, W\]"):
        vision.train_batches(np.zeros((4, 2, 3, 5, 5), np.uint8), np.zeros(4), batch_size=2, seed=0)


def test_frame_pool_ignores_frame_order_and_r2plus1d_does_not(small_data):
    clip = jnp.asarray(small_data["test"][0][:2, ..., None], jnp.float32) / 255.0
    order = np.array([2, 0, 3, 1])
    pool = vm.FramePool(10, pool="mean", width_multiplier=0.25, stem_stride=2)
    r21 = vm.R2Plus1D(10, widths=(4, 8, 8))
    for model, invariant in ((pool, True), (r21, False)):
        init = jax.jit(lambda k, x, model=model: model.init(k, x, train=False))
        v = init(jax.random.key(0), clip)
        # nonzero residual-branch scales so that every layer reads its input
        v = jax.tree.map(lambda p: p + 0.1 if p.ndim == 1 else p, v)
        # one call on both orders (evaluation mode: every row is scored on its own)
        out = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))(
            v, jnp.concatenate([clip, clip[:, order]]))
        a, b = out[:2], out[2:]
        if invariant:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        else:
            assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """``debug=fast`` run of ``+task=video`` through experiments.run's code path, exported."""
    from mlsd_jax.experiment import run

    cfg = compose_config(SMALL + ["export.enabled=true"])
    workdir = tmp_path_factory.mktemp("video_run")
    return run(cfg, workdir=workdir), workdir


def test_debug_run_trains_evaluates_and_exports(run_dir):
    import json

    results, workdir = run_dir
    m = results["metrics"]
    for k in ("valid/accuracy", "test/accuracy", "test/top3_accuracy"):
        assert 0.0 <= m[k] <= 1.0
    assert m["test/top3_accuracy"] >= m["test/accuracy"]
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["data"]["synthetic"] is True and saved["data"]["frames_in_model"] == 4
    assert (workdir / "export" / "1" / "saved_model.pb").is_file()


def test_video_file_gives_the_bundles_class_on_the_same_frames(run_dir, small_data, tmp_path):
    from mlsd_jax.export import load_bundle

    results, workdir = run_dir
    bundle = load_bundle(workdir / "export" / "1")
    clips, labels = small_data["test"]
    direct = bundle.predict({"frames": clips[:4][..., None]})
    names = list(bundle.card["features"]["class_names"])
    for i in range(4):
        path = vision.write_video(tmp_path / f"clip{i}.mp4", clips[i])
        got = vt.predict_video_file(bundle, path)
        np.testing.assert_array_equal(got["frames"][..., 0], clips[i])  # lossless round trip
        assert got["class_id"] == int(direct["class_id"][i])
        assert got["label"] == str(direct["label"][i]) == names[got["class_id"]]
        np.testing.assert_allclose([got["probs"][n] for n in names], direct["probs"][i],
                                   atol=1e-6)
        assert got["top_k"][0][0] == got["label"]
    # a longer (8 frames), larger (60x60) RGB video of the same clip: the evenly sampled
    # frames 0, 2, 5, 7 are the clip's frames 0..3, resized back to 30x30 exactly and
    # turned gray by the codec within a grey level or two
    big = np.repeat(np.repeat(np.repeat(clips[0], 2, 0), 2, 1), 2, 2)
    path = vision.write_video(tmp_path / "big.mp4", np.stack([big] * 3, -1))
    got = vt.predict_video_file(workdir / "export" / "1", path)
    assert got["frames"].shape == (4, 30, 30, 1)
    assert np.abs(got["frames"][..., 0].astype(int) - clips[0]).max() <= 3


def test_corrupt_or_missing_video_file_is_a_clear_error(run_dir, tmp_path):
    _, workdir = run_dir
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(vision.VisionFormatError, match="bad.mp4: video: cannot be decoded"):
        vt.predict_video_file(workdir / "export" / "1", bad)
    with pytest.raises(vision.VisionFormatError, match="file: not found"):
        vt.predict_video_file(workdir / "export" / "1", tmp_path / "missing.mp4")
