"""On-device augmentation (mlsd_jax.features.augment) on real Fashion-MNIST and digits images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlsd_jax.data import vision as V
from mlsd_jax.errors import ConfigError
from mlsd_jax.features.augment import AugmentConfig, augment, rotate

ALL_ON = AugmentConfig(translate=2, flip=True, rotate_deg=12.0, erase_p=0.7)
aug = jax.jit(augment, static_argnums=3)  # as the training step calls it (eager is slow)
rot = jax.jit(rotate)


@pytest.fixture(scope="module")
def fashion():
    """The first 512 Fashion-MNIST t10k images [n, 28, 28, 1] uint8 and their labels."""
    paths = V.fashion_mnist_paths()
    x = V.read_idx(paths[("test", "images-idx3")])[:512, :, :, None]
    y = V.read_idx(paths[("test", "labels-idx1")])[:512].astype(np.int32)
    return x, y


@pytest.fixture(scope="module")
def digits():
    d = V.load_digits_splits()
    return d.train_x[:, :, :, None], d.train_y  # [n, 8, 8, 1] uint8, [n] int32


def _shift(img, dy, dx):
    """``img`` [H, W, C] moved by (dy, dx) pixels, zeros entering."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _shifts_matching(out, img, t):
    return [(dy, dx) for dy in range(-t, t + 1) for dx in range(-t, t + 1)
            if np.array_equal(out, _shift(img, dy, dx))]


# ------------------------------------------------------------------------- shapes, keys, off
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("video", [False, True])
def test_shape_and_dtype_are_kept_and_labels_are_only_read(fashion, dtype, video):
    x, y = fashion
    x = x[:16].astype(dtype) / (255.0 if dtype == np.float32 else 1)
    x = x.astype(dtype)
    if video:
        x = np.stack([x, x[::-1], x], axis=1)  # [16, 3, 28, 28, 1]
    labels = y[:16].copy()
    cfg = AugmentConfig(translate=2, flip=True, flip_classes=(0, 2, 4), rotate_deg=12.0,
                        erase_p=0.7)
    out = aug(jax.random.key(0), x, labels, cfg)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(labels, y[:16])
    assert not np.array_equal(np.asarray(out), x)
    if dtype == np.float32:  # float stays float: values are not rounded to a 1/255 grid
        assert np.any(np.abs(np.asarray(out) * 255 - np.round(np.asarray(out) * 255)) > 1e-3)


def test_same_key_same_output_other_key_other_output(fashion):
    x, y = fashion[0][:32], fashion[1][:32]
    a = aug(jax.random.key(3), x, y, ALL_ON)
    b = aug(jax.random.key(3), x, y, ALL_ON)
    c = aug(jax.random.key(4), x, y, ALL_ON)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    # one draw per example: examples of one batch get different transforms
    same = np.repeat(x[:1], 32, axis=0)
    out = np.asarray(aug(jax.random.key(3), same, y, ALL_ON))
    assert len({o.tobytes() for o in out}) > 25


def test_everything_off_returns_the_input_itself(fashion):
    x, y = fashion[0][:8], fashion[1][:8]
    xj = jnp.asarray(x)
    assert augment(jax.random.key(0), xj, y, AugmentConfig()) is xj
    assert augment(jax.random.key(0), xj, y, AugmentConfig.from_mapping({})) is xj
    assert augment(jax.random.key(0), xj, y, AugmentConfig(flip=False, erase_p=0.0)) is xj
    out = jax.jit(augment, static_argnums=3)(jax.random.key(0), xj, y, AugmentConfig())
    np.testing.assert_array_equal(np.asarray(out), x)
    assert out.dtype == np.uint8


# ------------------------------------------------------------------------------------ translate
def test_translate_is_an_integer_shift_within_the_range(fashion):
    x, y = fashion
    t = 2
    cfg = AugmentConfig(translate=t)
    out = np.asarray(aug(jax.random.key(1), x[:64], y[:64], cfg))
    for o, img in zip(out, x[:64]):  # uint8 real images: some shift reproduces the output
        assert _shifts_matching(o, img, t), "output is not a shift of its input within +-2"
    # on images without zero pixels the shift is unique: every offset in the range occurs
    xf = x[:1].astype(np.float32) / 255.0 + 1.0
    many = np.repeat(xf, 512, axis=0)
    outf = np.asarray(aug(jax.random.key(2), many, y[:512], cfg))
    found = []
    for o in outf:
        m = _shifts_matching(o, xf[0], t)
        assert len(m) == 1
        found.append(m[0])
    assert set(found) == {(dy, dx) for dy in range(-t, t + 1) for dx in range(-t, t + 1)}
    counts = [found.count(s) for s in set(found)]  # uniform: about 20.5 each (sd 4.4)
    assert max(counts) < 37 and min(counts) > 6


# ------------------------------------------------------------------------------------ flip
def test_flip_only_the_configured_classes_about_half_the_time(digits):
    x, y = digits
    cfg = AugmentConfig(flip=True, flip_classes=(2,))
    flipped_2, n_2 = 0, 0
    for seed in range(4):
        out = np.asarray(aug(jax.random.key(seed), x, y, cfg))
        other = y != 2
        np.testing.assert_array_equal(out[other], x[other])  # other digits never flip
        for o, img in zip(out[~other], x[~other]):
            mirrored = img[:, ::-1]
            assert np.array_equal(o, img) or np.array_equal(o, mirrored)
            flipped_2 += int(np.array_equal(o, mirrored) and not np.array_equal(img, mirrored))
            n_2 += 1
    assert n_2 > 300
    assert 0.4 < flipped_2 / n_2 < 0.6


def test_flip_without_classes_flips_every_class_and_multi_hot_labels(digits):
    x, y = digits
    out = np.asarray(aug(jax.random.key(0), x, None, AugmentConfig(flip=True)))
    flipped = np.array([np.array_equal(o, i[:, ::-1]) and not np.array_equal(o, i)
                        for o, i in zip(out, x)])
    for c in range(10):
        assert 0.25 < flipped[y == c].mean() < 0.75
    # multi-hot tags: flips only if every positive tag is allowed
    tags = np.zeros((len(y), 10), np.float32)
    tags[np.arange(len(y)), y] = 1
    tags[::2, 7] = 1  # every other example also carries tag 7 (not allowed)
    cfg = AugmentConfig(flip=True, flip_classes=(1, 2, 3))
    out = np.asarray(aug(jax.random.key(0), x, tags, cfg))
    changed = np.any(out != x, axis=(1, 2, 3))
    allowed = np.isin(y, (1, 2, 3)) & (tags[:, 7] == 0)
    assert not changed[~allowed].any()
    assert 0.3 < changed[allowed].mean() < 0.7
    with pytest.raises(ValueError, match="labels"):
        aug(jax.random.key(0), x, None, cfg)


# ------------------------------------------------------------------------------------ rotate
@pytest.mark.parametrize("angle,k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotate_by_right_angles_equals_rot90(fashion, digits, angle, k):
    for x in (fashion[0][:16], digits[0][:16]):
        out = np.asarray(rot(x, jnp.full((len(x),), angle)))
        want = np.rot90(x, k=k, axes=(1, 2))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1])
        assert np.abs(out.astype(int) - want).max() <= 1  # edge pixels: interpolation only
        xf = x.astype(np.float32) / 255
        np.testing.assert_allclose(np.asarray(rot(xf, angle)), np.rot90(xf, k, (1, 2)),
                                   atol=1e-5)


def test_rotate_by_zero_is_the_identity_and_video_frames_turn_alike(fashion):
    x = fashion[0][:16]
    np.testing.assert_array_equal(np.asarray(rot(x, jnp.zeros(16))), x)
    xf = x.astype(np.float32) / 255
    np.testing.assert_array_equal(np.asarray(rot(xf, 0.0)), xf)
    clip = np.stack([x, x[::-1]], axis=1)  # [16, 2, 28, 28, 1]
    angles = jnp.linspace(-30, 30, 16)
    out = np.asarray(rot(clip, angles))
    np.testing.assert_array_equal(out[:, 0], np.asarray(rot(x, angles)))
    np.testing.assert_array_equal(out[:, 1], np.asarray(rot(x[::-1], angles)))


def test_augment_rotates_by_an_angle_within_the_range(fashion):
    x = fashion[0][:12].astype(np.float32) / 255
    deg = 15.0
    out = np.asarray(aug(jax.random.key(5), x, None, AugmentConfig(rotate_deg=deg)))
    grid = np.linspace(-3 * deg, 3 * deg, 361)  # 0.25 degree steps
    rotate_all = jax.jit(jax.vmap(lambda a: rotate(x, jnp.full((12,), a))))
    cands = np.asarray(rotate_all(jnp.asarray(grid)))
    err = np.abs(cands - out[None]).max(axis=(2, 3, 4))  # [angles, examples]
    best = grid[err.argmin(axis=0)]
    assert np.all(err.min(axis=0) < 0.05)
    assert np.all(np.abs(best) <= deg + 0.25)
    assert (best < -1).any() and (best > 1).any()


# ------------------------------------------------------------------------------------ erasing
def test_erasing_blanks_one_rectangle_of_the_configured_area(fashion):
    x = fashion[0][:128].astype(np.float32) / 255 + 1.0  # no zero pixels before erasing
    lo, hi = 0.05, 0.2
    cfg = AugmentConfig(erase_p=1.0, erase_area=(lo, hi), erase_aspect=(0.3, 3.3))
    out = np.asarray(aug(jax.random.key(7), x, None, cfg))
    fracs, aspects = [], []
    for o, img in zip(out, x):
        zero = o[..., 0] == 0
        assert zero.any()
        rows, cols = np.nonzero(zero)
        box = np.zeros_like(zero)
        box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
        np.testing.assert_array_equal(zero, box)  # one axis-aligned rectangle
        np.testing.assert_array_equal(o[~zero], img[~zero])  # the rest is untouched
        fracs.append(zero.mean())
        aspects.append((rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1))
    fracs = np.array(fracs)
    assert fracs.min() >= lo and fracs.max() <= hi
    assert fracs.max() - fracs.min() > 0.08  # the area varies over the range
    assert min(aspects) < 0.7 and max(aspects) > 1.4  # wide and tall boxes both occur
    # erase_p: about that share of the examples is erased; uint8 fill value is rounded
    xu = fashion[0][:256]
    cfg = AugmentConfig(erase_p=0.5, erase_value=127.6)
    out = np.asarray(aug(jax.random.key(8), xu, None, cfg))
    changed = np.any(out != xu, axis=(1, 2, 3))
    assert 0.38 < changed.mean() < 0.62
    assert np.all((out == xu) | (out == 128))


def test_switching_one_transform_on_keeps_the_draws_of_the_others(fashion):
    x = fashion[0][:64].astype(np.float32) / 255 + 1.0
    a = np.asarray(aug(jax.random.key(9), x, None, AugmentConfig(translate=3)))
    b = np.asarray(aug(jax.random.key(9), x, None, AugmentConfig(translate=3, erase_p=1.0)))
    kept = b != 0
    np.testing.assert_array_equal(a[kept], b[kept])
    assert (~kept).any()
    # with rotation on, the shift is folded into the rotation: still the rotated image shifted
    r = np.asarray(aug(jax.random.key(9), x, None, AugmentConfig(rotate_deg=20.0)))
    rt = np.asarray(aug(jax.random.key(9), x, None, AugmentConfig(rotate_deg=20.0, translate=3)))
    shifts = [_shifts_matching(o, img, 3) for o, img in zip(rt, r)]
    assert all(shifts)
    assert sum((0, 0) not in m for m in shifts) > 40


# ------------------------------------------------------------------------------------ video
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_video_clips_share_one_transform_across_frames(fashion, dtype):
    x = fashion[0][:24].astype(dtype)
    clips = np.repeat(x[:, None], 5, axis=1)  # [24, 5, 28, 28, 1], identical frames
    out = np.asarray(aug(jax.random.key(11), clips, fashion[1][:24], ALL_ON))
    assert out.shape == clips.shape and out.dtype == dtype
    for t in range(1, 5):
        np.testing.assert_array_equal(out[:, t], out[:, 0])
    # clips of one image get different transforms
    same = np.repeat(clips[:1], 24, axis=0)
    out = np.asarray(aug(jax.random.key(11), same, None, ALL_ON))
    assert len({o.tobytes() for o in out}) > 20
    # translation of a clip of distinct frames: one shift for all frames
    clip = np.stack([x, x[::-1], x[::2].repeat(2, axis=0)], axis=1)  # [24, 3, 28, 28, 1]
    out = np.asarray(aug(jax.random.key(12), clip.astype(np.float32) + 1.0, None,
                             AugmentConfig(translate=2)))
    for o, c in zip(out, clip.astype(np.float32) + 1.0):
        shifts = {tuple(_shifts_matching(o[t], c[t], 2)) for t in range(3)}
        assert len(shifts) == 1 and len(next(iter(shifts))) == 1


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize("bad,message", [
    ({"rotate_deg": -3}, "augment.rotate_deg=-3: expected >= 0"),
    ({"rotate_deg": 200}, "augment.rotate_deg=200: expected <= 180"),
    ({"translate": 1.5}, "augment.translate=1.5: expected an integer >= 0"),
    ({"translate": -1}, "augment.translate=-1: expected an integer >= 0"),
    ({"flip": "yes"}, "augment.flip='yes': expected true or false"),
    ({"flip_classes": [1]}, "augment.flip_classes=(1,): expected null unless augment.flip"),
    ({"flip": True, "flip_classes": [-1]}, "augment.flip_classes=(-1,): expected null"),
    ({"erase_p": 1.5}, "augment.erase_p=1.5: expected a probability in [0, 1]"),
    ({"erase_area": [0.3, 0.1]}, "augment.erase_area=(0.3, 0.1): expected 0 < low <= high <= 1"),
    ({"erase_area": [0.1, 1.5]}, "augment.erase_area=(0.1, 1.5): expected 0 < low <= high <= 1"),
    ({"erase_aspect": [0, 2]}, "augment.erase_aspect=(0, 2): expected 0 < low <= high"),
    ({"erase_aspect": 2}, "augment.erase_aspect=2: expected a pair (low, high)"),
    ({"erase_value": float("nan")}, "augment.erase_value=nan: expected a finite number"),
    ({"rotate": 10}, "augment.rotate: unknown setting; expected one of"),
])
def test_from_mapping_errors_name_the_field(bad, message):
    with pytest.raises(ConfigError) as err:
        AugmentConfig.from_mapping(bad)
    assert message in str(err.value)


def test_from_mapping_accepts_config_objects_and_is_hashable_for_jit(fashion):
    omegaconf = pytest.importorskip("omegaconf")
    raw = {"translate": 2, "flip": True, "flip_classes": [3, 0], "rotate_deg": 12,
           "erase_p": 0.7, "erase_area": [0.02, 0.25]}
    a = AugmentConfig.from_mapping(raw)
    b = AugmentConfig.from_mapping(omegaconf.OmegaConf.create(raw))
    assert a == b and hash(a) == hash(b)
    assert a.flip_classes == (0, 3) and a.rotate_deg == 12.0
    assert AugmentConfig.from_mapping(None) == AugmentConfig()
    x, y = fashion[0][:32], fashion[1][:32]
    f = jax.jit(augment, static_argnums=3)
    got = f(jax.random.key(0), x, y, a)
    compiled = f._cache_size()
    again = f(jax.random.key(0), x, y, b)  # equal config: the same compiled function
    assert f._cache_size() == compiled
    np.testing.assert_array_equal(np.asarray(got), np.asarray(again))
    assert got.shape == x.shape and got.dtype == np.uint8 and not np.array_equal(got, x)
    with pytest.raises(ValueError, match=r"images: shape \(28, 28, 1\)"):
        augment(jax.random.key(0), x[0], y, a)
