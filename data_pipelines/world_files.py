"""Writes procedural-world clips as ordinary files: MP4 (H.264 + AAC audio) and WAV, in class
folders, plus robot-style episodes (npz).

Why: the file readers (``video_files``, ``audio_files``, ``trajectories``) need realistic files
to be exercised end to end and benchmarked (``selfflow bench-data``), and a run on the files can
be compared with the same clips generated in memory. Folders are named by the class label the
world gives (``<n>_balls``, label = n − 1, as the ``world`` source), so the folder sources yield
the same labels.

    python -m data_pipelines.world_files --out data/world_files --clips 200 [--image-size 64]

writes ``OUT/video/<n>_balls/clip_00000.mp4`` (with its audio track), ``OUT/audio/<n>_balls/
clip_00000.wav`` and ``OUT/episodes/clip_00000.npz`` (frames, proprio, actions). Clips are 2 s
by default, so a 1.6 s training clip has room for a random start.
"""

from __future__ import annotations

import argparse
import fractions
from pathlib import Path

import numpy as np

from data_pipelines.world import WorldConfig, WorldSource


def write_mp4(path: Path, video: np.ndarray, fps: int, audio: np.ndarray | None, sample_rate: int) -> Path:
    """video float (T, H, W, 3) in [-1, 1] -> H.264 yuv420p; audio float (S,) in [-1, 1] -> AAC mono."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.clip((video + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = "mono"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            chunk = sound.frame_size or 1024
            for pos in range(0, len(audio), chunk):
                piece = audio[pos : pos + chunk].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = sample_rate, pos
                frame.time_base = fractions.Fraction(1, sample_rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def export_clips(
    out_dir, num_clips: int, *, image_size: int = 64, duration: float = 2.0, fps: int = 10, seed: int = 0
) -> dict[str, list[Path]]:
    """Writes ``num_clips`` world clips as MP4 + WAV + npz episode; returns the paths by kind."""
    import soundfile

    from data_pipelines.trajectories import write_episode

    out = Path(out_dir)
    world = WorldSource(num_clips, WorldConfig(image_size=image_size, duration=duration, fps=fps), seed=seed)
    paths: dict[str, list[Path]] = {"video": [], "audio": [], "episodes": []}
    for i in range(num_clips):
        clip = world[i]
        label = f"{int(clip['num_balls'])}_balls"
        sr = world.config.sample_rate
        paths["video"].append(
            write_mp4(out / "video" / label / f"clip_{i:05d}.mp4", clip["video"], fps, clip["audio"], sr)
        )
        wav = out / "audio" / label / f"clip_{i:05d}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(wav, clip["audio"], sr, subtype="FLOAT")
        paths["audio"].append(wav)
        frames = np.clip((clip["video"] + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        paths["episodes"].append(
            write_episode(
                out / "episodes" / f"clip_{i:05d}.npz",
                frames=frames,
                proprio=clip["proprio"],
                actions=clip["actions"],
                label=int(clip["num_balls"]) - 1,
            )
        )
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = export_clips(
        args.out, args.clips, image_size=args.image_size, duration=args.seconds, seed=args.seed
    )
    print(f"wrote {len(paths['video'])} clips to {args.out}/video, audio and episodes")


if __name__ == "__main__":
    main()
