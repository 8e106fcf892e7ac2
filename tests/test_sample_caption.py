"""``selfflow sample --caption``: prompting a trained run's text-conditioned layouts.

One run, trained once for the module: flat-colour images captioned with their colour (the run of
``test_text.py``, where only the caption tells the colour). Prompted samples follow their caption
at guidance 3, ``0_text_given.txt`` holds the captions as typed and in order, the run's seed makes
a prompt reproducible while another caption changes the sample, and every request the run cannot
take is one line with exit status 2 that names the offending value."""

import numpy as np
import pytest
from PIL import Image
from test_text import COLOURS, _folder, _folder_config, colour_caption_config

from helpers_cli import run_cli
from helpers_config import tiny_image_config

SCALE = 4  # save_grid's upscaling


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """The colour run of test_text.py (60 steps, lr 3e-3): its samples follow their caption at
    guidance 3. Captions are at most 2 tokens x 4 bytes = 8 bytes."""
    from selfflow.train import train

    root = tmp_path_factory.mktemp("colours")
    cfg = colour_caption_config(root / "data", log_every=10)
    train(cfg, root / "run", progress=False, write_samples=False)
    return root / "run"


def _sample(run, out, *args):
    return run_cli("sample", "--run-dir", run, "--out", out, "--steps", 10, "--cfg", 3, *args)


def _images(out) -> np.ndarray:
    """The t2i grid (one row) as (samples, H, W, 3) uint8."""
    with Image.open(out / "t2i" / "1_image.png") as im:
        grid = np.asarray(im.convert("RGB"))
    side = 8 * SCALE
    return grid.reshape(side, -1, side, 3).transpose(1, 0, 2, 3)


def test_prompted_samples_follow_their_captions_in_order(colour_run, tmp_path):
    """--caption and --captions-file together: the given file is the captions in that order (the
    file's blank line skipped, its lines stripped), and sample k has caption k's colour."""
    captions = tmp_path / "captions.txt"
    captions.write_text("green\n\n  white \n")
    out = tmp_path / "out"
    rc, stdout, err = _sample(
        colour_run,
        out,
        "--caption",
        "red",
        "--caption",
        "blue",
        "--captions-file",
        captions,
        "--layout",
        "t2i",
    )
    assert rc == 0, err
    assert "4 captions" in stdout and "warning" not in err
    assert sorted(p.name for p in out.iterdir()) == ["t2i"]
    assert (out / "t2i" / "0_text_given.txt").read_text() == "red\nblue\ngreen\nwhite\n"
    means = _images(out).mean(axis=(1, 2))  # (4, 3) in [0, 255]
    expected = np.array([COLOURS[c] for c in ("red", "blue", "green", "white")]) > 0
    np.testing.assert_array_equal(means > 127.5, expected, err_msg=str(means))


def test_a_prompt_is_reproducible_and_the_caption_changes_it(colour_run, tmp_path):
    """The run's sample seed fixes the noise: "red" twice (two samples each) gives the same pixels
    again, "blue" other ones; within a call each sample draws its own noise."""
    images = {}
    for name, caption in (("red", "red"), ("again", "red"), ("blue", "blue")):
        rc, _, err = _sample(colour_run, tmp_path / name, "--caption", caption, "--caption", caption)
        assert rc == 0, err
        assert (tmp_path / name / "t2i" / "0_text_given.txt").read_text() == f"{caption}\n" * 2
        images[name] = _images(tmp_path / name).astype(int)
    np.testing.assert_array_equal(images["red"], images["again"])
    assert not np.array_equal(images["red"][0], images["red"][1])
    assert np.abs(images["red"] - images["blue"]).mean() > 20


def test_a_caption_outside_the_vocabulary_is_written_as_typed_with_a_warning(colour_run, tmp_path):
    """'p' never occurs in the training captions: the model reads it as the unknown byte (its
    tokens would decode to "urle"), the file keeps what was asked and stderr says which characters."""
    rc, _, err = _sample(colour_run, tmp_path / "out", "--caption", "purple")
    assert rc == 0, err
    assert (tmp_path / "out" / "t2i" / "0_text_given.txt").read_text() == "purple\n"
    assert "caption 'purple': the characters 'p' are outside the run's byte vocabulary" in err


@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(
            ["--caption", "red", "--caption", "a red ball"],
            "caption 'a red ball' is 10 bytes, longer than the 8 this run reads "
            "(data.text_tokens 2 x data.caption_bytes_per_token 4)",
            id="too_long",
        ),
        pytest.param(["--captions-file", "{empty}"], "captions.txt: holds no captions", id="empty_file"),
        pytest.param(
            ["--caption", "red", "--layout", "t2v"],
            "layout 't2v' is not in this run; it has ['t2i']",
            id="layout",
        ),
    ],
)
def test_a_caption_the_run_cannot_take_is_a_usage_error(colour_run, tmp_path, args, expected):
    empty = tmp_path / "captions.txt"
    empty.write_text("\n  \n")
    out = tmp_path / "out"
    rc, _, err = _sample(colour_run, out, *[a.format(empty=empty) for a in args])
    assert rc == 2
    assert err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_captions_need_a_text_layout_with_a_byte_vocabulary(tmp_path):
    """A run without text names its layouts; a run on encoder features cannot tokenise a caption."""
    from selfflow.train import train

    image_only = tiny_image_config(train=dict(steps=1, checkpoint_every=1))
    train(image_only, tmp_path / "image", progress=False, write_samples=False)
    rc, _, err = _sample(tmp_path / "image", tmp_path / "a", "--caption", "red")
    assert rc == 2 and err.count("\n") == 1
    assert "captions need a layout with a text:condition segment; this run has ['image']" in err

    _folder(tmp_path / "data", "features", count=4)
    train(
        _folder_config(tmp_path / "data", "features", 2),
        tmp_path / "features",
        progress=False,
        write_samples=False,
    )
    rc, _, err = _sample(tmp_path / "features", tmp_path / "b", "--caption", "red")
    assert rc == 2 and err.count("\n") == 1
    assert "this run's text is encoder features (SourceConfig(text='features'))" in err
    assert "a caption cannot be tokenised" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
