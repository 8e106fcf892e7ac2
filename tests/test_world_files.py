"""World clips written as MP4 + WAV + npz read back through the file sources as the same data."""

import numpy as np
import pytest

from data_pipelines.audio_files import AudioFileSource
from data_pipelines.trajectories import TrajectorySource
from data_pipelines.video_files import VideoFileSource
from data_pipelines.world import WorldConfig, WorldSource
from data_pipelines.world_files import export_clips
from modalities.audio import data_spec as audio_data_spec
from modalities.audio import waveform_to_logmel
from selfflow.config import DataConfig

SIZE, SECONDS, FPS = 32, 1.6, 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("world_files")
    paths = export_clips(out, 3, image_size=SIZE, duration=SECONDS, fps=FPS, seed=4)
    world = WorldSource(3, WorldConfig(image_size=SIZE, duration=SECONDS, fps=FPS), seed=4)
    return out, paths, [world[i] for i in range(3)]


def test_files_are_in_class_folders_by_ball_count(exported):
    out, paths, clips = exported
    for path, clip in zip(paths["video"], clips):
        assert path.parent.name == f"{int(clip['num_balls'])}_balls" and path.suffix == ".mp4"


def test_video_files_decode_to_the_world_frames_and_sound(exported):
    out, paths, clips = exported
    spec = audio_data_spec(DataConfig(clip_seconds=SECONDS, fps=FPS))
    src = VideoFileSource(out / "video", frames=16, fps=FPS, image_size=SIZE, audio=spec)
    by_name = {p: i for i, p in enumerate(map(str, paths["video"]))}
    for k in range(len(src)):
        clip = clips[by_name[src.where(k)]]
        example = src[k]
        assert np.abs(example["video"] - clip["video"]).mean() < 0.05  # H.264 at crf 18
        reference = waveform_to_logmel(clip["audio"], spec)[0]
        loud = reference > -0.5  # AAC is lossy: compare where there is sound
        if loud.any():
            assert np.corrcoef(example["audio"][loud], reference[loud])[0, 1] > 0.9


def test_wav_and_episode_files_are_exact(exported):
    out, paths, clips = exported
    spec = audio_data_spec(DataConfig(clip_seconds=SECONDS, fps=FPS))
    audio = AudioFileSource(out / "audio", spec, crop="start")
    episodes = TrajectorySource(out / "episodes", window=16)
    for k in range(3):
        clip = clips[[str(p) for p in paths["audio"]].index(audio.where(k))]
        np.testing.assert_allclose(audio[k]["audio"], waveform_to_logmel(clip["audio"], spec)[0], atol=1e-4)
        assert int(audio[k]["label"]) == sorted({int(c["num_balls"]) for c in clips}).index(
            int(clip["num_balls"])
        )
        np.testing.assert_allclose(episodes[k]["actions"], clips[k]["actions"], atol=1e-6)
        np.testing.assert_allclose(episodes[k]["video"], clips[k]["video"], atol=1 / 127.5 + 1e-6)
        assert int(episodes[k]["label"]) == int(clips[k]["num_balls"]) - 1
