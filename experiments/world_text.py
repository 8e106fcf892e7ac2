"""Text-conditioned generation on the procedural world: text-to-video, text-to-audio and
text + first frame -> actions, from captions the world writes about each clip.

Command:

    .venv/bin/selfflow train experiments/world_text.py --run-dir runs/world_text

Captions (data_pipelines/world_captions.py) name the number of balls, each ball's size, colour and
material, which way the agent is pushed and how many collisions there are, e.g.
"2 balls: agent big blue metal, small green rubber; pushed down-left; 3 hits, 1 ball-ball".
They are read as UTF-8 bytes padded to 128 (32 text tokens of 4 bytes each, data.text_tokens x
data.caption_bytes_per_token), with a byte vocabulary fitted on the first captions and stored in
the checkpoint, and learned embeddings (the text input projection). Every layout has a
"text:condition" segment: text tokens join the sequence (joint attention) and their masked mean
joins the timestep conditioning (model.text_pooled). 10 % of captions are dropped for
classifier-free guidance (objective.text_dropout, drawn with the label dropout), and samples use
guidance 2 against the null caption.

Layouts:
  text_to_video    [text 32 (condition), video 128]
  text_to_audio    [text 32 (condition), audio 40]
  text_to_actions  [text 32 (condition), image 16 (condition), action 16]

samples/<layout>/ holds the given captions (0_text_given.txt, one per line) beside the generated
clips, sounds and action plots.

Expected runtime: about 9 minutes on 2 CPU cores (measured: 7 min 20 s of training for 600
steps, tiny model, 2.2M parameters, with other jobs on the cores, plus ~1 min of setup).
Expected result (measured, mean of the first / last 3 logged values): fm_loss/video 1.20 -> 0.37,
fm_loss/audio 1.31 -> 0.37, fm_loss/action 1.92 -> 1.33.

Does the run use its captions? Two measures, both on the EMA weights:

1. Held-out velocity MSE with each clip's own caption, another clip's, and the null caption
   (selfflow/text_validation.py):

       .venv/bin/python -m selfflow.text_validation --run-dir runs/world_text --batches 8

   After 600 steps (given / shuffled / null): video 0.1930 / 0.1930 / 0.1946, audio 0.3494 /
   0.3494 / 0.3639, action 1.408 / 1.410 / 1.408. After 3000 steps (`--set train.steps=3000`,
   about 25 min with other jobs on the 2 cores): video 0.08604 / 0.08625 / 0.08671, audio 0.11665 /
   0.11676 / 0.12112, action 1.1243 / 1.1320 / 1.1284. The null caption predicts worse, a wrong
   caption barely so.

2. Text consistency (selfflow/eval/text_consistency.py; in `selfflow eval` as text_<modality>_*):
   readers trained on real clips read each attribute back from the generated clip, scored against
   its own caption (given), another clip's (shuffled) and, for samples generated with the null
   caption, against the captions (null); "real" is the reader on the real clips (its ceiling):

       .venv/bin/python -m selfflow.eval.text_consistency --run-dir runs/world_text --num 256

   After 3000 steps, accuracy given / shuffled / null / real (256 held-out captions, guidance 2):

       video  balls         0.656 / 0.352 / 0.695 / 0.879    (the class label carries the count)
       video  agent colour  0.344 / 0.348 / 0.367 / 0.648
       video  direction     0.301 / 0.379 / 0.305 / 0.516    (horizontal; vertical alike)
       audio  agent colour  0.340 / 0.355 / 0.340 / 0.816    (pitch is the material)
       audio  hits          0.188 / 0.180 / 0.184 / 0.934
       action direction     0.418 / 0.348 / 0.371 / 1.000    (horizontal; read exactly)

   The readers can read most attributes from real clips (video: count, colour, size; audio: colour,
   size, collisions), but the generated clips match their captions no better than other clips'
   captions: this run follows its class label (the ball count is right with or without the caption),
   not yet what its captions say. The balls are 1-2 pixels wide and the model has 2.2M parameters.
   Given every step, the actions layout alone does follow its captions (0.90 vs 0.36 shuffled for
   the horizontal direction): experiments/world_text_actions.py.

One byte per token (`--set data.caption_bytes_per_token=1 --set data.text_tokens=112`) gives the
same held-out picture after 600 steps (video 0.1928 / 0.1929 / 0.1949, audio 0.3625 / 0.3625 /
0.3709) in 13 min 40 s of training, hence 4 bytes per token here.
tests/test_text.py shows the same code learning a caption's content when it decides the data
(flat-colour images captioned with their colour: given 1.02 vs shuffled 1.61 after 60 steps).
Smoke test: add `--set train.steps=20`.
"""

from selfflow.config import (
    Config,
    DataConfig,
    LayoutConfig,
    ModalityConfig,
    ModelConfig,
    ObjectiveConfig,
    OptimConfig,
    SampleConfig,
    TrainConfig,
)

CONFIG = Config(
    seed=0,
    model=ModelConfig(preset="tiny", positions="rope", patch_size=4, text_pooled=True),
    objective=ObjectiveConfig(kind="self_flow", gamma=0.8, ema_decay=0.99, text_dropout=0.1),
    optim=OptimConfig(learning_rate=2e-3, warmup_steps=100),
    data=DataConfig(
        source="world",
        image_size=16,
        num_examples=20_000,
        num_classes=3,
        text_tokens=32,
        caption_bytes_per_token=4,
    ),
    train=TrainConfig(steps=600, log_every=10, checkpoint_every=200),
    sample=SampleConfig(steps=40, cfg_scale=2.0, per_class=4),
    modalities=(ModalityConfig("video"), ModalityConfig("audio"), ModalityConfig("action")),
    layouts=(
        LayoutConfig("text_to_video", ("text:condition", "video"), weight=0.5, batch_size=8),
        LayoutConfig("text_to_audio", ("text:condition", "audio"), weight=0.3, batch_size=8),
        LayoutConfig(
            "text_to_actions", ("text:condition", "image:condition", "action"), weight=0.2, batch_size=8
        ),
    ),
)
