"""Image and video classifiers: ResNets (basic and bottleneck), a small ViT, frame pooling and
a (2+1)D convolutional video model. Linen modules, channels-last, BatchNorm state in
``batch_stats`` (the core trains it as mutable model state and freezes it in evaluation).

* :class:`ResNet` -- He et al., "Deep Residual Learning for Image Recognition" (2016). ``stem``
  ``"imagenet"`` is the 7x7/2 conv + 3x3/2 max-pool of the paper (224x224 inputs); ``"small"``
  is one 3x3 conv (stride ``stem_stride``, 1 by default) and no pooling, as CIFAR and
  Fashion-MNIST ResNets use (a 28x28 image would otherwise shrink to 7x7 before the first block). Basic blocks (two 3x3 convs) for 18/34,
  bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion, stride on the 3x3 as torchvision's "v1.5")
  for 50. The last BatchNorm of every residual branch starts at zero, so every block starts as
  the identity (Goyal et al. 2017). :func:`resnet` builds the named depths: ``resnet18``,
  ``resnet34``, ``resnet50`` (stages of widths 64-512) and ``resnet20`` (CIFAR-style: three
  stages of 16, 32, 64 channels, three basic blocks each, 0.27M parameters).
* :class:`ViT` -- Dosovitskiy et al. (2021): non-overlapping patches -> linear embedding + a
  learned position embedding + a class token -> the core's pre-norm
  :class:`~mlsd_jax.models.layers.TransformerEncoder` -> the class token's features.
* :class:`FramePool` -- a 2-D backbone on every frame of a clip, features averaged (or max-ed)
  over time, one linear head: the single-frame model trained on whole clips.
* :class:`R2Plus1D` -- Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action
  Recognition" (2018): each 3x3x3 conv factorised into a 1x3x3 spatial and a 3x1x1 temporal
  conv with BatchNorm + ReLU between, residual blocks, global average pooling over time and space.

All models take float inputs ``[B, H, W, C]`` (video ``[B, T, H, W, C]``) already normalised by
the task and return logits ``[B, num_classes]``; ``features(x)`` returns the pooled features.
``dtype=bfloat16`` runs the convolutions and matmuls in bf16 with float32 parameters and
BatchNorm statistics (mixed precision); the logits are float32.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlsd_jax.models.conv import ConvBNAct, batch_norm, conv
from mlsd_jax.models.layers import TransformerEncoder, dense, layer_norm

# name -> (block, blocks per stage, stage widths)
RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet20": ("basic", (3, 3, 3), (16, 32, 64)),
}


def _dtype(dtype):
    if dtype is None or dtype == "float32":
        return None
    if dtype in ("bfloat16", "bf16"):
        return jnp.bfloat16
    if dtype in ("float16", "fp16"):
        return jnp.float16
    return dtype


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual; a 1x1 projection when shape changes."""

    features: int
    strides: int = 1
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        y = ConvBNAct(self.features, 3, self.strides, dtype=self.dtype, name="conv1")(x, train=train)
        y = ConvBNAct(self.features, 3, 1, act=None, zero_init_scale=True, dtype=self.dtype,
                      name="conv2")(y, train=train)
        if x.shape[-1] != self.features or self.strides != 1:
            x = ConvBNAct(self.features, 1, self.strides, act=None, dtype=self.dtype,
                          name="proj")(x, train=train)
        return nn.relu(x + y)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (4x), residual with a projection when needed."""

    features: int
    strides: int = 1
    expansion: int = 4
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        out = self.features * self.expansion
        y = ConvBNAct(self.features, 1, 1, dtype=self.dtype, name="conv1")(x, train=train)
        y = ConvBNAct(self.features, 3, self.strides, dtype=self.dtype, name="conv2")(y, train=train)
        y = ConvBNAct(out, 1, 1, act=None, zero_init_scale=True, dtype=self.dtype,
                      name="conv3")(y, train=train)
        if x.shape[-1] != out or self.strides != 1:
            x = ConvBNAct(out, 1, self.strides, act=None, dtype=self.dtype, name="proj")(x, train=train)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet over ``[B, H, W, C]`` floats. See the module docstring."""

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    block: str = "basic"
    stem: str = "small"
    stem_stride: int = 1
    dropout: float = 0.0
    dtype: str | None = None

    def setup(self):
        if self.block not in ("basic", "bottleneck"):
            raise ValueError(f"model.block={self.block!r}: expected 'basic' or 'bottleneck'")
        if self.stem not in ("small", "imagenet"):
            raise ValueError(f"model.stem={self.stem!r}: expected 'small' or 'imagenet'")
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(f"model.stage_sizes {tuple(self.stage_sizes)} and model.widths "
                             f"{tuple(self.widths)} must have the same length")

    @nn.compact
    def features(self, x, *, train: bool = False):
        dt = _dtype(self.dtype)
        x = x.astype(dt or jnp.float32)
        if self.stem == "imagenet":
            x = ConvBNAct(self.widths[0], 7, 2, dtype=dt, name="stem")(x, train=train)
            x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
        else:
            x = ConvBNAct(self.widths[0], 3, self.stem_stride, dtype=dt, name="stem")(x, train=train)
        Block = BasicBlock if self.block == "basic" else Bottleneck
        for s, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
            for b in range(n):
                x = Block(w, 2 if (s > 0 and b == 0) else 1, dtype=dt,
                          name=f"stage{s + 1}_block{b + 1}")(x, train=train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = self.features(x, train=train)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return dense(self.num_classes, "embed", "mlp", name="head")(h).astype(jnp.float32)


def resnet(name: str, num_classes: int, *, stem: str = "small", stem_stride: int = 1,
           dropout: float = 0.0, dtype: str | None = None, width_multiplier: float = 1.0,
           blocks: Sequence[int] | None = None) -> ResNet:
    """A named ResNet (``resnet18``, ``resnet34``, ``resnet50``, ``resnet20``).

    ``stem_stride=2`` on the small stem halves the resolution before the first stage (4x fewer
    FLOPs everywhere; 28x28 Fashion-MNIST then runs its first stage at 14x14). ``blocks``
    overrides the number of blocks per stage (``[1, 1, 1]``: a ResNet-8 for smoke runs)."""
    if name not in RESNETS:
        raise ValueError(f"model.depth={name!r}: expected one of {sorted(RESNETS)}")
    block, sizes, widths = RESNETS[name]
    if blocks is not None:
        if len(blocks) != len(sizes) or min(blocks) < 1:
            raise ValueError(f"model.blocks={list(blocks)}: expected {len(sizes)} counts >= 1 "
                             f"(one per stage of {name})")
        sizes = tuple(int(b) for b in blocks)
    widths = tuple(max(1, int(round(w * width_multiplier))) for w in widths)
    return ResNet(num_classes, sizes, widths, block, stem, int(stem_stride), dropout, dtype)


class ViT(nn.Module):
    """A small vision transformer: ``patch`` x ``patch`` patches, ``dim`` features, a class token."""

    num_classes: int
    patch: int = 4
    dim: int = 128
    depth: int = 6
    heads: int = 4
    mlp_dim: int = 256
    dropout: float = 0.0
    dtype: str | None = None

    @nn.compact
    def features(self, x, *, train: bool = False):
        dt = _dtype(self.dtype)
        b, h, w, _ = x.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"image {h}x{w} is not divisible by model.patch={self.patch}")
        x = conv(self.dim, self.patch, self.patch, padding="VALID", dtype=dt,
                 kernel_init=nn.initializers.lecun_normal(), name="patch_embed")(x.astype(dt or jnp.float32))
        x = x.reshape(b, -1, self.dim)
        cls = self.param("cls", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                            (None, None, "embed")),
                         (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)).astype(x.dtype), x], axis=1)
        pos = self.param("pos_embed", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, None, "embed")), (1, x.shape[1], self.dim))
        x = x + pos.astype(x.dtype)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = TransformerEncoder(self.depth, self.heads, self.mlp_dim, self.dropout, 0.0, dt,
                               name="encoder")(x, None, train=train)
        return x[:, 0].astype(jnp.float32)

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = self.features(x, train=train)
        return dense(self.num_classes, "embed", "mlp", name="head")(h).astype(jnp.float32)


# ---------------------------------------------------------------------------------- video
class FramePool(nn.Module):
    """A 2-D ResNet on every frame, features pooled over time (``mean`` or ``max``), a linear head.

    With ``frames=1`` at inference it is the single-frame baseline; trained on clips it learns
    from every frame. Input ``[B, T, H, W, C]``.
    """

    num_classes: int
    depth: str = "resnet20"
    pool: str = "mean"
    width_multiplier: float = 1.0
    stem_stride: int = 1
    dtype: str | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        if self.pool not in ("mean", "max"):
            raise ValueError(f"model.pool={self.pool!r}: expected 'mean' or 'max'")
        b, t = x.shape[:2]
        if self.depth not in RESNETS:
            raise ValueError(f"model.depth={self.depth!r}: expected one of {sorted(RESNETS)}")
        block, sizes, widths = RESNETS[self.depth]
        widths = tuple(max(1, int(round(w * self.width_multiplier))) for w in widths)
        backbone = ResNet(self.num_classes, sizes, widths, block, "small", self.stem_stride,
                          dtype=self.dtype, name="backbone")
        h = backbone.features(x.reshape(b * t, *x.shape[2:]), train=train)
        h = h.reshape(b, t, -1)
        h = h.mean(axis=1) if self.pool == "mean" else h.max(axis=1)
        return dense(self.num_classes, "embed", "mlp", name="head")(h).astype(jnp.float32)


class Conv2Plus1D(nn.Module):
    """A (2+1)D unit: 1xkxk spatial conv -> BN -> ReLU -> kx1x1 temporal conv -> BN (-> act)."""

    features: int
    strides: tuple[int, int, int] = (1, 1, 1)
    act: str | None = "relu"
    zero_init_scale: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        t_in, h_out = x.shape[-1], self.features
        # the intermediate width keeps the parameter count of a full 3x3x3 conv (the paper's M_i)
        mid = max(1, (27 * t_in * h_out) // (9 * t_in + 3 * h_out))
        st, sh, sw = self.strides
        x = ConvBNAct(mid, (1, 3, 3), (1, sh, sw), dtype=self.dtype, name="spatial")(x, train=train)
        return ConvBNAct(h_out, (3, 1, 1), (st, 1, 1), act=self.act,
                         zero_init_scale=self.zero_init_scale, dtype=self.dtype,
                         name="temporal")(x, train=train)


class R2Plus1D(nn.Module):
    """A small (2+1)D ResNet over clips ``[B, T, H, W, C]``: a (2+1)D stem, residual stages of
    two (2+1)D units each, global average pooling over time and space, a linear head."""

    num_classes: int
    widths: Sequence[int] = (16, 32, 64)
    blocks: int = 1
    temporal_strides: Sequence[int] = (1, 2, 2)
    dropout: float = 0.0
    dtype: str | None = None

    @nn.compact
    def features(self, x, *, train: bool = False):
        dt = _dtype(self.dtype)
        x = x.astype(dt or jnp.float32)
        x = Conv2Plus1D(self.widths[0], (1, 2, 2), dtype=dt, name="stem")(x, train=train)
        for s, w in enumerate(self.widths):
            for b in range(self.blocks):
                st = (int(self.temporal_strides[s]), 2, 2) if (s > 0 and b == 0) else (1, 1, 1)
                y = Conv2Plus1D(w, st, dtype=dt, name=f"stage{s + 1}_block{b + 1}_a")(x, train=train)
                y = Conv2Plus1D(w, (1, 1, 1), act=None, zero_init_scale=True, dtype=dt,
                                name=f"stage{s + 1}_block{b + 1}_b")(y, train=train)
                if x.shape[-1] != w or st != (1, 1, 1):
                    x = ConvBNAct(w, 1, st, act=None, dtype=dt,
                                  name=f"stage{s + 1}_block{b + 1}_proj")(x, train=train)
                x = nn.relu(x + y)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = self.features(x, train=train)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return dense(self.num_classes, "embed", "mlp", name="head")(h).astype(jnp.float32)
