"""Video quality: the clip model against the single-frame baseline on held-out SYNTHETIC clips.

The data are `+task=video`'s clips (SYNTHETIC: real Fashion-MNIST images moving along seeded
trajectories, a grey occluder over 60-80% of the object in a seeded range of T/4 to T/2 frames;
train clips from training images, valid from validation images, test from test images). The
same clips (``data.clip_seed=0``) for every arm and seed; the seed changes the initialisation,
the batch order and the augmentation. Arms, all through `mlsd_jax.experiment.run` with the
task's settings (optimizer, steps, batch size), validation accuracy choosing the checkpoint:

  * ``clip``: R2Plus1D over all T frames (the task's default model);
  * ``single_frame``: the baseline -- the same clips cut to their middle frame (frame T // 2) in
    training, validation and test (``data.frames=middle``), classified by FramePool over that
    one frame, i.e. a half-width ResNet-20 on one image;
  * ``frame_pool``: FramePool over all T frames (mean of per-frame features), the same backbone
    as the baseline: what the other frames add without temporal convolutions;
  * ``single_frame_long``: the baseline trained T times as many steps (it then sees as many
    frames as the clip arms; a clip costs about T single-frame steps), so that the comparison
    is not won by a baseline that saw fewer frames.

Reported: test accuracy and top-3 accuracy, mean ± std over seeds, and the paired difference
clip - single_frame per seed. The test split chooses nothing.

    python benchmarks/video_quality.py --seeds 0 1 2          # the measurement
    python benchmarks/video_quality.py --seeds 0 1 2 --resume # add the runs not yet in the file
    python benchmarks/video_quality.py --quick                # a smoke run (clip, single_frame)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {
    "clip": ["video/model=r2plus1d"],
    "single_frame": ["video/model=frame_pool", "data.frames=middle"],
    "frame_pool": ["video/model=frame_pool"],
    "single_frame_long": ["video/model=frame_pool", "data.frames=middle"],
}
LONG = {"single_frame_long"}  # trained T times as many steps: as many frames as the clip arms'
QUICK_ARMS = ("clip", "single_frame")
PAIRS = (("clip", "single_frame"), ("clip", "single_frame_long"), ("frame_pool", "single_frame"),
         ("frame_pool", "single_frame_long"))
REPORTED = ("accuracy", "top3_accuracy")


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from mlsd_jax.experiment import apply_debug, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return apply_debug(cfg, overrides)


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def run_arm(arm: str, seed: int, quick: bool, steps: int | None, workdir: Path) -> dict:
    from mlsd_jax.experiment import run

    overrides = ["+task=video", *ARMS[arm], f"seed={seed}", "export.enabled=false",
                 "trainer.progress=false"]
    if quick:
        overrides += ["debug=fast", "data.num_frames=4", "data.size=30"]
    elif steps or arm in LONG:
        base = _compose(["+task=video"])
        steps = int(steps or base.trainer.max_steps)
        if arm in LONG:
            steps *= int(base.data.num_frames)
        overrides += [f"trainer.max_steps={steps}", f"trainer.eval_every={max(steps // 3, 1)}"]
    load0, t = _load(), time.perf_counter()
    results = run(_compose(overrides), workdir=workdir)
    row = {k: float(v) for k, v in results["metrics"].items()}
    data = results.get("data", {})
    row.update(fit_s=time.perf_counter() - t, best_step=results["best_step"],
               steps_run=results["steps_run"], load_start=load0, load_end=_load(),
               frames_in_model=data.get("frames_in_model"),
               occluded_middle_frame_share=data.get("occluded_middle_frame_share"),
               sizes=data.get("sizes"), overrides=overrides)
    return row


def summarize(rows: list[dict], seeds) -> dict:
    out = {}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        s = {"seeds": [r["seed"] for r in mine],
             "fit_s_mean": float(np.mean([r["fit_s"] for r in mine]))}
        for k in REPORTED:
            vals = [r[f"test/{k}"] for r in mine]
            s[f"test/{k}"], s[f"test/{k}_std"] = float(np.mean(vals)), float(np.std(vals))
        vals = [r["valid/accuracy"] for r in mine]
        s["valid/accuracy"], s["valid/accuracy_std"] = float(np.mean(vals)), float(np.std(vals))
        out[arm] = s
    by = {(r["arm"], r["seed"]): r for r in rows}
    for model, base in PAIRS:
        diffs = [by[(model, s)]["test/accuracy"] - by[(base, s)]["test/accuracy"]
                 for s in seeds if (model, s) in by and (base, s) in by]
        if diffs:
            out[f"{model}_minus_{base}"] = {"per_seed": diffs, "mean": float(np.mean(diffs)),
                                            "std": float(np.std(diffs)),
                                            "wins": int(sum(d > 0 for d in diffs)),
                                            "seeds": len(diffs)}
    return out


def _host() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores"


def markdown(summary: dict, meta: dict, rows: list[dict]) -> str:
    lines = ["# Video quality: clip model vs single-frame baseline (SYNTHETIC clips)", "",
             "Commands: " + "; ".join(f"`{c}`" for c in meta["commands"]) + "  ",
             f"Host: {meta['host']}; jax {meta['jax']}; load average (1 min) "
             f"{meta['load_range']} during the runs (other work shared the CPU).  ",
             f"Seeds {meta['seeds']} (initialisation, batch order, augmentation); the same "
             f"clips for every run.", "",
             "Data: SYNTHETIC clips -- real Fashion-MNIST test/valid/train images moving in "
             f"{meta['clip']}, a grey occluder over 60-80% of the object in a seeded range of "
             "T/4..T/2 frames; train / valid / test clips from the train / valid / test images "
             f"({meta['sizes']}). Share of test clips whose middle frame is occluded: "
             f"{meta['occluded_middle_test']}.", "",
             "Mean ± std over seeds of the **test** clips; the checkpoint is chosen on validation "
             "accuracy.", "",
             "| arm | model | frames seen | test accuracy | test top-3 | valid accuracy | fit s |",
             "|---|---|---|---|---|---|---|"]
    models = {"clip": "R2Plus1D (8/16/32)", "single_frame": "FramePool = ResNet-20 x0.5, 1 frame",
              "frame_pool": "FramePool (mean), ResNet-20 x0.5",
              "single_frame_long": "FramePool = ResNet-20 x0.5, 1 frame, T x steps"}
    seen = {"clip": "all T", "single_frame": "middle (T // 2), train and test",
            "frame_pool": "all T", "single_frame_long": "middle (T // 2), train and test"}
    for arm, s in summary.items():
        if arm not in ARMS:
            continue
        lines.append(f"| {arm} | {models[arm]} | {seen[arm]} | {s['test/accuracy']:.4f} ± "
                     f"{s['test/accuracy_std']:.4f} | {s['test/top3_accuracy']:.4f} ± "
                     f"{s['test/top3_accuracy_std']:.4f} | {s['valid/accuracy']:.4f} ± "
                     f"{s['valid/accuracy_std']:.4f} | {s['fit_s_mean']:.0f} |")
    for model, base in PAIRS:
        d = summary.get(f"{model}_minus_{base}")
        if d:
            lines += ["", f"{model} - {base}, test accuracy, paired by seed: {d['mean']:+.4f} ± "
                          f"{d['std']:.4f} (per seed "
                          f"{', '.join(f'{x:+.4f}' for x in d['per_seed'])}; {model} wins "
                          f"{d['wins']} of {d['seeds']})."]
    rising = [a for a in ARMS if any(r["arm"] == a for r in rows) and all(
        r["best_step"] == r["steps_run"] for r in rows if r["arm"] == a)]
    if rising:
        lines += ["", f"Best checkpoint at the last step in every run of: {', '.join(rising)} "
                      f"(validation accuracy still rising when training stopped)."]
    lines += ["", "Per run:", "", "| arm | seed | test accuracy | valid accuracy | best step | "
              "steps | fit s | load |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['test/accuracy']:.4f} | "
                     f"{r['valid/accuracy']:.4f} | {r['best_step']} | {r['steps_run']} | "
                     f"{r['fit_s']:.0f} | {r['load_start']:.1f}-{r['load_end']:.1f} |")
    if not meta.get("complete", True):
        lines += ["", "**Partial**: the run was interrupted; only the rows above were measured."]
    if meta.get("quick"):
        lines += ["", "**Quick mode** (smoke run: tiny model, few steps); not a measurement."]
    return "\n".join(lines) + "\n"


def write(args, argv, rows: list[dict], partial: bool) -> str:
    import jax

    summary = summarize(rows, args.seeds)
    loads = [x for r in rows for x in (r["load_start"], r["load_end"]) if x is not None]
    first = rows[0] if rows else {}
    cfg = _compose(["+task=video"])
    command = "python benchmarks/video_quality.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    meta = {"command": command, "commands": list(dict.fromkeys([*args.commands, command])),
            "seeds": args.seeds, "arms": args.arms, "quick": args.quick, "steps": args.steps,
            "host": _host(), "jax": jax.__version__, "python": platform.python_version(),
            "load_range": f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a",
            "clip": (f"{cfg.data.num_frames} frames of {cfg.data.size}x{cfg.data.size}"
                     if not args.quick else "4 frames of 30x30 (quick)"),
            "sizes": first.get("sizes"),
            "occluded_middle_test": (first.get("occluded_middle_frame_share") or {}).get("test"),
            "synthetic": True, "complete": not partial}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "video_quality_quick" if args.quick else "video_quality"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": rows},
                                                 indent=2, default=float))
    text = markdown(summary, meta, rows)
    (out / f"{stem}.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps of every arm (default: the task's trainer.max_steps)")
    ap.add_argument("--quick", action="store_true", help="smoke run: one seed, tiny runs")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in the results file; run only the missing ones")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.arms = [a for a in args.arms if a in QUICK_ARMS] or args.arms
    rows, args.commands = [], []
    path = Path(args.out) / ("video_quality_quick.json" if args.quick else "video_quality.json")
    if args.resume and path.is_file():
        old = json.loads(path.read_text())
        rows = [r for r in old["runs"] if r["arm"] in args.arms and r["seed"] in args.seeds]
        args.commands = list(old["meta"].get("commands") or [old["meta"]["command"]])
    done = {(r["arm"], r["seed"]) for r in rows}
    for seed in args.seeds:
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                row = run_arm(arm, seed, args.quick, args.steps, Path(tmp))
            rows.append({"arm": arm, "seed": seed, **row})
            print(arm, seed, {k: round(v, 4) for k, v in row.items() if k.startswith("test/")},
                  f"{row['fit_s']:.0f}s", flush=True)
            write(args, argv, rows, partial=True)  # what is done survives an interrupted run
    print(write(args, argv, rows, partial=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
