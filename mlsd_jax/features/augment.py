"""On-device image and video augmentation (pure JAX, jit-able, one random draw per example).

:func:`augment` transforms a batch that is already on the device, inside a jitted training
step: images ``[B, H, W, C]`` or videos ``[B, T, H, W, C]`` (every frame of one clip gets the
*same* transform, different clips different ones), uint8 or float. It keeps the shape and the
dtype (integer images are rounded and clipped to their dtype's range after an interpolating or
filling step; translation and flips move pixels without touching their values). The per-example
randomness comes from ``jax.random.split(key, B)``: each example's key draws one fixed-length
vector of uniforms in which every transform owns its own slots, so the same key gives the same
output, switching one transform on or off does not change the draws of the others, and the
traced graph holds a single random-bits call (which keeps the compile short). With every option
off :func:`augment` returns its input object itself (no ops are added to the traced graph).

The transforms, in the order they are applied (each one only when configured; the Python-level
branches read the static :class:`AugmentConfig`):

* **flip** (``flip``): a horizontal mirror (the width axis) with probability 0.5. With
  ``flip_classes`` set, only examples whose label is one of these classes may flip (a mirrored
  digit is another symbol; a mirrored shoe is still a shoe). Labels ``[B]`` are class ids;
  labels ``[B, K]`` are multi-hot tags, and an example may flip only if none of its positive
  tags lies outside ``flip_classes``.
* **rotation** (``rotate_deg``): an angle drawn uniformly from ``[-rotate_deg, rotate_deg]``
  degrees (positive = counter-clockwise as displayed, rows running down), about the image
  centre ``((H-1)/2, (W-1)/2)``, sampled bilinearly with zeros outside the image
  (:func:`rotate`).
* **translation** (``translate``): "random crop with padding": the image is padded with
  ``translate`` zeros on each side of both spatial axes and a window of the original size is
  cut at a random offset (``jax.lax.dynamic_slice``), i.e. an integer shift ``(dy, dx)`` with
  ``|dy|, |dx| <= translate``, drawn uniformly, zeros entering from the edge. With rotation on,
  the shift is folded into the rotation's bilinear gather instead (the same result, one pass).
* **random erasing** (``erase_p``; Zhong, Zheng, Kang, Li and Yang, "Random Erasing Data
  Augmentation", AAAI 2020, arXiv:1708.04896): with probability ``erase_p`` one rectangle is
  set to ``erase_value`` over all channels (and all frames of a clip). Its area fraction is
  drawn uniformly from ``erase_area`` and its aspect ratio (height / width) log-uniformly from
  ``erase_aspect`` (symmetric between tall and wide boxes, as torchvision's ``RandomErasing``
  draws it); height and width are rounded to whole pixels and the box is placed uniformly
  inside the image. As in the paper, a draw that does not fit is redrawn: ten candidates are
  drawn at once and the first whose rounded box fits inside the image *and* whose rounded
  area fraction still lies in ``erase_area`` is used; if none qualifies the example is left
  unerased. The mask is built from ``iota`` comparisons, so it costs one ``where``.

:meth:`AugmentConfig.from_mapping` builds the configuration from a config mapping (Hydra/
OmegaConf or a plain dict), rejecting unknown keys and naming the field and the expected range
of any bad value (``augment.rotate_deg=-3: expected >= 0``). :class:`AugmentConfig` is frozen
and hashable, so it can be a static argument: ``jax.jit(augment, static_argnums=3)``.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mlsd_jax.errors import ConfigError, check

__all__ = ["AugmentConfig", "augment", "rotate"]

_PREFIX = "augment"
_ERASE_TRIES = 10
# slots of each example's uniform draw, one range per transform (fixed whatever is switched on)
_U_FLIP = 0
_U_ROTATE = 1
_U_TRANSLATE = slice(2, 4)
_U_ERASE = slice(4, 7 + 2 * _ERASE_TRIES)  # apply, top, left, areas [tries], aspects [tries]
_U_SIZE = 7 + 2 * _ERASE_TRIES


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_range_pair(name: str, value, low_ok, expected: str) -> tuple[float, float]:
    key = f"{_PREFIX}.{name}"
    check(isinstance(value, (tuple, list)) and len(value) == 2 and all(map(_is_real, value)),
          key, value, f"a pair (low, high) of numbers, {expected}")
    lo, hi = float(value[0]), float(value[1])
    check(math.isfinite(lo) and math.isfinite(hi) and low_ok(lo) and lo <= hi, key, value,
          expected)
    return lo, hi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations :func:`augment` applies (all off by default). Frozen and hashable.

    ``translate``: max integer shift (pixels) on each spatial axis, zero padding.
    ``flip``: horizontal flip with probability 0.5. ``flip_classes``: ``None`` = every class may
    flip, else only these labels. ``rotate_deg``: max rotation angle in degrees (0..180).
    ``erase_p``: probability of random erasing; ``erase_area``: range of the erased area
    fraction (0 < low <= high <= 1); ``erase_aspect``: range of the box's height/width ratio
    (0 < low <= high); ``erase_value``: the fill value (in the images' units: 0..255 for uint8).
    """

    translate: int = 0
    flip: bool = False
    flip_classes: tuple[int, ...] | None = None
    rotate_deg: float = 0.0
    erase_p: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.25)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    erase_value: float = 0.0

    def __post_init__(self):
        p = _PREFIX
        check(_is_int(self.translate) and self.translate >= 0, f"{p}.translate", self.translate,
              "an integer >= 0")
        check(isinstance(self.flip, (bool, np.bool_)), f"{p}.flip", self.flip, "true or false")
        if self.flip_classes is not None:
            fc = self.flip_classes
            check(isinstance(fc, (tuple, list)) and len(fc) > 0
                  and all(_is_int(c) and c >= 0 for c in fc),
                  f"{p}.flip_classes", fc, "null (every class may flip) or a non-empty list of "
                  "class ids >= 0")
            check(bool(self.flip), f"{p}.flip_classes", fc, "null unless augment.flip=true")
            object.__setattr__(self, "flip_classes", tuple(sorted({int(c) for c in fc})))
        check(_is_real(self.rotate_deg), f"{p}.rotate_deg", self.rotate_deg, "a number")
        check(math.isfinite(self.rotate_deg) and self.rotate_deg >= 0, f"{p}.rotate_deg",
              self.rotate_deg, ">= 0")
        check(self.rotate_deg <= 180, f"{p}.rotate_deg", self.rotate_deg, "<= 180")
        check(_is_real(self.erase_p) and 0.0 <= self.erase_p <= 1.0, f"{p}.erase_p",
              self.erase_p, "a probability in [0, 1]")
        area = _check_range_pair("erase_area", self.erase_area,
                                 lambda lo: lo > 0, "0 < low <= high <= 1")
        check(area[1] <= 1.0, f"{p}.erase_area", self.erase_area, "0 < low <= high <= 1")
        aspect = _check_range_pair("erase_aspect", self.erase_aspect,
                                   lambda lo: lo > 0, "0 < low <= high")
        check(_is_real(self.erase_value) and math.isfinite(self.erase_value),
              f"{p}.erase_value", self.erase_value, "a finite number")
        object.__setattr__(self, "translate", int(self.translate))
        object.__setattr__(self, "flip", bool(self.flip))
        object.__setattr__(self, "rotate_deg", float(self.rotate_deg))
        object.__setattr__(self, "erase_p", float(self.erase_p))
        object.__setattr__(self, "erase_area", area)
        object.__setattr__(self, "erase_aspect", aspect)
        object.__setattr__(self, "erase_value", float(self.erase_value))

    @property
    def active(self) -> bool:
        """Whether any transform is switched on."""
        return bool(self.translate or self.flip or self.rotate_deg or self.erase_p)

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> "AugmentConfig":
        """The configuration from a mapping (``None`` or empty = everything off). Unknown keys
        and out-of-range values raise :class:`~mlsd_jax.errors.ConfigError` naming the field."""
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            try:  # OmegaConf DictConfig and other mapping-likes
                cfg = dict(cfg)
            except (TypeError, ValueError):
                raise ConfigError(f"{_PREFIX}={cfg!r}: expected a mapping of augmentation "
                                  "settings") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in cfg if k not in known)
        if unknown:
            raise ConfigError(f"{_PREFIX}.{unknown[0]}: unknown setting; expected one of "
                              f"{', '.join(sorted(known))}")
        kwargs = {}
        for k, v in cfg.items():
            listy = not isinstance(v, (str, bytes, Mapping)) and hasattr(v, "__iter__")
            if v is not None and listy:
                v = tuple(v)  # lists / ListConfig -> hashable tuples
            kwargs[str(k)] = v
        return cls(**kwargs)


# ------------------------------------------------------------------------------------ helpers
def _spatial_axes(images) -> tuple[int, int]:
    if images.ndim not in (4, 5):
        raise ValueError(f"images: shape {tuple(images.shape)}; expected [B, H, W, C] (images) "
                         "or [B, T, H, W, C] (videos)")
    return images.ndim - 3, images.ndim - 2


def _to_dtype(x, dtype):
    """float32 values -> ``dtype`` (integers rounded and clipped to the dtype's range)."""
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        x = jnp.clip(jnp.round(x), info.min, info.max)
    return x.astype(dtype)


def _fill_value(value: float, dtype):
    return _to_dtype(jnp.asarray(value, jnp.float32), dtype)


def _check_images(images):
    images = jnp.asarray(images)
    _spatial_axes(images)
    dtype = images.dtype
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"images: dtype {images.dtype}; expected an integer (e.g. uint8) or "
                         "floating dtype")
    return images


def _rotate_one(x, angle_deg, shift=None):
    """One example ``[..., H, W, C]`` rotated by ``angle_deg`` (bilinear, zero fill), float32;
    ``shift`` ``(dy, dx)`` (integers) then moves the result by whole pixels, zeros entering,
    in the same gather (the same as rotating and then translating)."""
    h, w = x.shape[-3], x.shape[-2]
    theta = jnp.deg2rad(angle_deg.astype(jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rows = jnp.arange(h, dtype=jnp.int32)[:, None]
    cols = jnp.arange(w, dtype=jnp.int32)[None, :]
    keep = None
    if shift is not None:  # output (i, j) shows the rotated image's (i - dy, j - dx)
        rows, cols = rows - shift[0], cols - shift[1]
        keep = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w))[:, :, None]
    u = rows.astype(jnp.float32) - cy  # output row offsets [H, 1]
    v = cols.astype(jnp.float32) - cx  # output column offsets [1, W]
    src_y = cy + cos * u + sin * v  # [H, W]
    src_x = cx - sin * u + cos * v
    y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
    wy1, wx1 = src_y - y0, src_x - x0
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    xf = x.astype(jnp.float32)
    out = jnp.zeros(xf.shape, jnp.float32)
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            weight = jnp.where(inside, wy * wx, 0.0)[:, :, None]  # [H, W, 1]
            if keep is not None:
                weight = jnp.where(keep, weight, 0.0)
            px = xf[..., jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1), :]  # [..., H, W, C]
            out = out + weight * px
    return out


def rotate(images, angles_deg):
    """Rotates each example of ``images`` (``[B, H, W, C]`` or ``[B, T, H, W, C]``) by its angle
    in ``angles_deg`` ``[B]`` (degrees, positive = counter-clockwise as displayed), about the
    centre, bilinear, zeros outside. Keeps shape and dtype (integers rounded and clipped).
    ``rotate(x, 90)`` on a square image equals ``np.rot90`` over the spatial axes."""
    images = _check_images(images)
    angles = jnp.broadcast_to(jnp.asarray(angles_deg, jnp.float32), images.shape[:1])
    return _to_dtype(jax.vmap(_rotate_one)(images, angles), images.dtype)


def _uniform_int(u, n: int):
    """Uniform integers in ``0..n-1`` (``n`` may be traced) from uniforms ``u`` in [0, 1)."""
    return jnp.clip(jnp.floor(u * n).astype(jnp.int32), 0, n - 1)


def _crop_offsets(u, t: int):
    """Crop offsets ``(oy, ox)`` in ``0..2t`` of the padded image from uniforms ``u`` [2]; the
    content moves by ``(t - oy, t - ox)``."""
    return _uniform_int(u[0], 2 * t + 1), _uniform_int(u[1], 2 * t + 1)


def _translate_one(x, u, t: int):
    """One example shifted by the offsets drawn from ``u`` [2] (pad ``t`` zeros, crop)."""
    ha, wa = x.ndim - 3, x.ndim - 2
    pad = [(0, 0)] * x.ndim
    pad[ha] = pad[wa] = (t, t)
    padded = jnp.pad(x, pad)
    oy, ox = _crop_offsets(u, t)
    start = [jnp.zeros((), jnp.int32)] * x.ndim
    start[ha], start[wa] = oy, ox
    return jax.lax.dynamic_slice(padded, start, x.shape)


def _erase_mask(u, h: int, w: int, area: tuple[float, float], aspect: tuple[float, float],
                p: float):
    """``[H, W]`` bool mask of one random-erasing box drawn from the uniforms ``u``
    (all False when not applied)."""
    n = _ERASE_TRIES
    u_apply, u_top, u_left = u[0], u[1], u[2]
    frac = area[0] + (area[1] - area[0]) * u[3:3 + n]
    lo, hi = math.log(aspect[0]), math.log(aspect[1])
    log_r = lo + (hi - lo) * u[3 + n:3 + 2 * n]
    target = frac * (h * w)
    ratio = jnp.exp(log_r)
    bh = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)
    bw = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
    min_px = math.ceil(area[0] * h * w - 1e-9)  # the area range in whole pixels (static)
    max_px = math.floor(area[1] * h * w + 1e-9)
    ok = ((bh >= 1) & (bh <= h) & (bw >= 1) & (bw <= w)
          & (bh * bw >= min_px) & (bh * bw <= max_px))
    first = jnp.argmax(ok)
    bh, bw, any_ok = bh[first], bw[first], ok[first]
    top = _uniform_int(u_top, h - bh + 1)
    left = _uniform_int(u_left, w - bw + 1)
    rows = jax.lax.broadcasted_iota(jnp.int32, (h, w), 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, (h, w), 1)
    inside = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
    apply = any_ok & (u_apply < p)
    return inside & apply


def _may_flip(labels, flip_classes, batch: int):
    if flip_classes is None:
        return jnp.ones((batch,), bool)
    if labels is None:
        raise ValueError("labels: None; expected labels [B] (or multi-hot [B, K]) when "
                         "augment.flip_classes is set")
    labels = jnp.asarray(labels)
    classes = jnp.asarray(flip_classes, jnp.int32)
    if labels.ndim == 1 and labels.shape[0] == batch:
        return jnp.any(labels.astype(jnp.int32)[:, None] == classes[None, :], axis=1)
    if labels.ndim == 2 and labels.shape[0] == batch:
        allowed = jnp.zeros((labels.shape[1],), bool).at[classes].set(True, mode="drop")
        return ~jnp.any((labels > 0) & ~allowed[None, :], axis=1)
    raise ValueError(f"labels: shape {tuple(labels.shape)}; expected [{batch}] class ids or "
                     f"[{batch}, K] multi-hot tags")


# ------------------------------------------------------------------------------------ augment
def augment(key, images, labels, cfg: AugmentConfig):
    """Augments a batch (see the module docstring): ``images`` ``[B, H, W, C]`` or
    ``[B, T, H, W, C]`` -> same shape and dtype. ``labels`` (``[B]`` ids or ``[B, K]`` multi-hot;
    only read, and only for ``cfg.flip_classes``). With every option off returns ``images``."""
    if isinstance(cfg, Mapping) or cfg is None:
        cfg = AugmentConfig.from_mapping(cfg)
    if not isinstance(cfg, AugmentConfig):
        raise TypeError(f"cfg: {type(cfg).__name__}; expected an AugmentConfig")
    if not cfg.active:
        return images
    images = _check_images(images)
    batch, dtype = images.shape[0], images.dtype
    h, w = images.shape[-3], images.shape[-2]
    keys = jax.random.split(key, batch)
    u = jax.vmap(lambda k: jax.random.uniform(k, (_U_SIZE,)))(keys)  # [B, slots]
    x = images
    as_float = False  # whether x is float32 working values (after rotation) for `dtype`

    if cfg.flip:
        coin = u[:, _U_FLIP] < 0.5
        do = coin & _may_flip(labels, cfg.flip_classes, batch)
        do = do.reshape((batch,) + (1,) * (x.ndim - 1))
        x = jnp.where(do, jnp.flip(x, axis=x.ndim - 2), x)

    t = cfg.translate
    if cfg.rotate_deg > 0:
        angles = cfg.rotate_deg * (2.0 * u[:, _U_ROTATE] - 1.0)
        if t > 0:  # translation folded into the rotation's gather (same draws, same result)
            def rot_shift(xi, a, ui):
                oy, ox = _crop_offsets(ui, t)
                return _rotate_one(xi, a, (t - oy, t - ox))
            x = jax.vmap(rot_shift)(x, angles, u[:, _U_TRANSLATE])
        else:
            x = jax.vmap(_rotate_one)(x, angles)
        as_float = True
    elif t > 0:
        x = jax.vmap(lambda xi, ui: _translate_one(xi, ui, t))(x, u[:, _U_TRANSLATE])

    if cfg.erase_p > 0:
        masks = jax.vmap(lambda ui: _erase_mask(ui, h, w, cfg.erase_area, cfg.erase_aspect,
                                                cfg.erase_p))(u[:, _U_ERASE])
        masks = masks.reshape((batch,) + (1,) * (x.ndim - 4) + (h, w, 1))  # frames share it
        fill = (jnp.asarray(cfg.erase_value, jnp.float32) if as_float
                else _fill_value(cfg.erase_value, x.dtype))
        x = jnp.where(masks, fill, x)

    return _to_dtype(x, dtype) if as_float else x
