"""CPU reproduction 3: cross-modal training on the procedural world and on PushT.

Command (from the repository root; 41 min on 2 CPU cores, measured: world 10, PushT 31 with recording
the PushT episodes if missing):

    .venv/bin/python paper_repro/cpu/cross_modal.py            # --part world | pusht for one half

world   experiments/world_paired.py's model and data, Self-Flow, WORLD_STEPS steps, one layout:
          video_only    [video]            video alone
          audio_video   [video, audio]     the same clips with their sound, generated jointly
        Both layouts are named "world", so their logged curves share names (eval/world/...).
        Measured on the EMA model: video frame and motion Fréchet proxies (both runs), the audio
        Fréchet proxy and audio-video synchrony (audio_video only), each beside its real-vs-real
        floor / real clips' score.
pusht   experiments/pusht_video_action.py (video-action on 100 scripted-expert episodes), PUSHT_STEPS
        steps, objective Self-Flow vs flow matching. Measured: action L2 error of the policy
        layout against held-out demonstrations (original units) and the policy's success rate and
        coverage in the gym-pusht simulator on EPISODES held-out starts (beside the scripted
        expert's and random targets' on the same starts).

Writes OUT/results.json, OUT/results.md and one curves PNG per part (selfflow.compare). Runs
resume like any run: rerunning trains nothing that finished and re-measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORLD_STEPS = 600
PUSHT_STEPS = 1500
EVAL = 150
EVAL_SAMPLES = 128
EPISODES = 20  # simulator rollouts, on held-out starts
RECORDED_EPISODES = 100  # scripted-expert episodes recorded for training (experiments/pusht_video_action.py)
IMAGE_SIZE = 32  # rendered frame size, recorded and in the rollouts


def _config(experiment: str, overrides: list[str]):
    from selfflow.config import load_config_file

    return load_config_file(ROOT / "experiments" / experiment, overrides)


def world_configs() -> dict:
    from selfflow.config import LayoutConfig, ModalityConfig, resolve

    base = _config(
        "world_paired.py",
        [
            f"train.steps={WORLD_STEPS}",
            f"train.checkpoint_every={EVAL}",
            "train.keep_checkpoints=1",
            f"train.eval_every={EVAL}",
            f"train.eval_samples={EVAL_SAMPLES}",
            "sample.steps=20",
        ],
    )
    arms = {"video_only": ("video",), "audio_video": ("video", "audio")}
    no_image = dataclasses.replace(base.model, patch_size=None)  # the arms have no image segment
    return {
        name: resolve(
            dataclasses.replace(
                base,
                model=no_image,
                layouts=(LayoutConfig("world", segments, 1.0, 8),),
                modalities=tuple(ModalityConfig(m) for m in segments),
            )
        )
        for name, segments in arms.items()
    }


def pusht_configs() -> dict:
    common = [
        f"train.steps={PUSHT_STEPS}",
        "train.checkpoint_every=250",
        "train.keep_checkpoints=1",
        f"train.eval_every={EVAL * 2}",
        f"train.eval_samples={EVAL_SAMPLES}",
        "sample.steps=20",
    ]
    return {
        kind: _config("pusht_video_action.py", common + [f"objective.kind={kind}"])
        for kind in ("self_flow", "flow_matching")
    }


def _train_and_evaluate(name: str, cfg, out: Path) -> tuple[dict, Path]:
    from selfflow.eval.evaluate import EvalSettings, evaluate_run
    from selfflow.train import train

    run_dir = out / name
    print(f"cross_modal: {name} -> {run_dir}", file=sys.stderr)
    train(cfg, run_dir, progress=False, write_samples=False)
    results, _, _ = evaluate_run(run_dir, EvalSettings(num=EVAL_SAMPLES, probe=False))
    return results, run_dir


def run_world(out: Path) -> dict:
    rows = {name: _train_and_evaluate(name, cfg, out)[0] for name, cfg in world_configs().items()}
    _curves(
        out,
        list(rows),
        ("fm_loss/video", "eval/world/video_frame_fd", "eval/world/video_motion_fd"),
        "world_curves.png",
    )
    return rows


def run_pusht(out: Path) -> dict:
    from selfflow.eval.policy import simulator_report

    configs = pusht_configs()
    data = ROOT / configs["self_flow"].data.sources[0].path
    if not data.is_dir():
        from data_pipelines import pusht_expert

        pusht_expert.main(
            ["--out", str(data), "--episodes", str(RECORDED_EPISODES), "--image-size", str(IMAGE_SIZE)]
        )
    rows = {}
    for name, cfg in configs.items():
        results, run_dir = _train_and_evaluate(name, cfg, out)
        rows[name] = {
            **results,
            "simulator": simulator_report(run_dir, episodes=EPISODES, image_size=IMAGE_SIZE)[1],
        }
    _curves(out, list(rows), ("fm_loss/action", "fm_loss/video", "eval/policy/action_l2"), "pusht_curves.png")
    return rows


def _curves(out: Path, names: list[str], metrics: tuple[str, ...], png: str) -> None:
    from selfflow.compare import compare

    compare([out / n for n in names], out / png, metrics=metrics)


def _g(x: float) -> str:
    return f"{x:.3g}"


def world_table(world: dict) -> str:
    """The video-only vs audio-video table of paper_repro/README.md, with the real-data floors."""
    lines = [
        "| run | video frame FD | video motion FD | audio FD | AV synchrony | val/video |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in world.items():
        cells = [
            _g(r[k]) if k in r else "-"
            for k in (
                "world/video_frame_fd",
                "world/video_motion_fd",
                "world/audio_fd",
                "world/av_synchrony",
                "val/video",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    av = world["audio_video"]
    floors = [
        _g(av[k + "_real"])
        for k in ("world/video_frame_fd", "world/video_motion_fd", "world/audio_fd", "world/av_synchrony")
    ]
    lines.append("| real clips (floor) | " + " | ".join(floors) + " | - |")
    return "\n".join(lines)


def pusht_table(pusht: dict) -> str:
    """The Self-Flow vs flow matching table of paper_repro/README.md, with the expert and random targets."""
    lines = [
        "| run | action L2, policy layout | action L2, inverse layout | val/policy/action | "
        "policy video frame FD | simulator success | mean max coverage |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in pusht.items():
        sim = r["simulator"]["model"]
        lines.append(
            f"| {name} | {r['policy/action_l2']:.1f} | {r['inverse/action_l2']:.1f} | "
            f"{r['val/policy/action']:.3f} | {_g(r['policy/video_frame_fd'])} | "
            f"{sim['success_rate']:.2f} | {sim['mean_max_coverage']:.3f} |"
        )
    sim = next(iter(pusht.values()))["simulator"]  # the same starts for every run
    for label, key in (
        ("scripted expert (same starts)", "expert"),
        ("random targets (same starts)", "random"),
    ):
        lines.append(
            f"| {label} | - | - | - | - | {sim[key]['success_rate']:.2f} | "
            f"{sim[key]['mean_max_coverage']:.3f} |"
        )
    return "\n".join(lines)


def markdown(results: dict) -> str:
    lines = ["# Cross-modal CPU reproduction", ""]
    if results.get("world"):
        lines += [
            f"## Procedural world, Self-Flow, {WORLD_STEPS} steps, {EVAL_SAMPLES} samples",
            "",
            world_table(results["world"]),
            "",
        ]
    if results.get("pusht"):
        lines += [
            f"## PushT video-action, {PUSHT_STEPS} steps; simulator: {EPISODES} held-out starts",
            "",
            pusht_table(results["pusht"]),
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("world", "pusht", "all"), default="all")
    parser.add_argument("--out", default="runs/paper_repro/cross_modal")
    args = parser.parse_args(argv)
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain 0.2.18: workers read absl flags
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if args.part in ("world", "all"):
        results["world"] = run_world(out)
    if args.part in ("pusht", "all"):
        results["pusht"] = run_pusht(out)
    path.write_text(json.dumps(results, indent=2, sort_keys=True))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
