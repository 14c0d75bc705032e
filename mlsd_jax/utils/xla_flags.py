"""JAX and XLA:CPU settings that make training steps fast on CPU, applied where JAX starts.

Two kinds of settings, both safe to apply more than once:

* :func:`use_unrolled_threefry_on_cpu` -- JAX lowers its threefry PRNG hash on CPU as a 5-step
  ``while`` loop (meant to shorten compiles), so every dropout mask and noise draw writes and
  rereads its counters five times through memory. The unrolled lowering (the one JAX uses on GPU
  and TPU) is one fused elementwise kernel: the random bits are identical, random draws cost 3-4x
  less, the ranking train steps ran 1.13x (attention ranker) and 1.27x (MLP ranker) faster on a
  2-core CPU, and compiles got shorter. It can be applied at any time before a function is
  lowered; :mod:`mlsd_jax.models.layers` applies it on import.
* :func:`set_cpu_xla_flags` -- default ``XLA_FLAGS`` for the CPU backend. They must be in the
  environment before JAX initialises its backends (the first ``jax.devices()``, ``jit`` call or
  array creation), so call it at the top of the entry point, before anything touches JAX.
  Flags the user already set are left alone.
"""
from __future__ import annotations

import os

# XLA:CPU flags set by default (name -> value); the XLA_FLAGS a user sets win.
#
# xla_cpu_experimental_ynn_fusion_type: which fusions XLA:CPU hands to YNNPACK (a comma list;
# a leading "-" removes a type from the default set).
# * "-reduce": XLA's own emitter takes reductions (YNNPACK still runs the dots). YNNPACK reduce
#   fusions cannot take a broadcast operand, so every LayerNorm, softmax and loss reduction came
#   with broadcasts written out to memory as separate kernels. Measured on the ranking train
#   step (2-core AMD EPYC, CPU time per step, medians of 4 interleaved processes): MLP ranker
#   154 -> 124 ms, attention ranker 316 -> 292 ms. Removing the elementwise fusions as well
#   ("-eltwise") was slower for the attention ranker (332 ms); turning YNNPACK off entirely
#   was no better than "-reduce".
# * "-individual_convolution": Eigen convolutions instead of YNNPACK's (about 2x slower here);
#   a ResNet-style step ran 1.56x faster (measured when the framework was designed).
# Other candidates measured on the ranking step made no difference beyond the noise:
# xla_cpu_multi_thread_eigen=false.
CPU_XLA_FLAGS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "-individual_convolution,-reduce",
}

_THREEFRY_PATCHED = False


def use_unrolled_threefry_on_cpu() -> bool:
    """Lowers ``threefry2x32`` on CPU with JAX's unrolled rule (same bits, one fused kernel).

    Returns True when the rule is in place, False when this JAX has no such internals (then
    nothing changes). Idempotent.
    """
    global _THREEFRY_PATCHED
    if _THREEFRY_PATCHED:
        return True
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        rule = tf._threefry2x32_lowering_rule  # the unrolled rule of the default platforms
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError):  # internals moved: keep JAX's own lowering
        return False
    _THREEFRY_PATCHED = True
    return True


def set_cpu_xla_flags(flags: dict[str, str] | None = None) -> str:
    """Adds ``flags`` (default :data:`CPU_XLA_FLAGS`) to ``XLA_FLAGS`` unless already given.

    Must run before JAX initialises its backends. Returns the resulting ``XLA_FLAGS``.
    """
    flags = CPU_XLA_FLAGS if flags is None else flags
    current = os.environ.get("XLA_FLAGS", "")
    given = {part.split("=", 1)[0].lstrip("-") for part in current.split()}
    extra = [f"--{k}={v}" for k, v in flags.items() if k not in given]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return os.environ.get("XLA_FLAGS", "")


def configure_jax() -> None:
    """Everything above: call once at the start of a program, before JAX is used (entry points:
    ``experiments/run.py``, benchmarks, notebooks)."""
    set_cpu_xla_flags()
    use_unrolled_threefry_on_cpu()
