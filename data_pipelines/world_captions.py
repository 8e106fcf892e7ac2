"""Captions of procedural-world clips (:mod:`data_pipelines.world`), written from the clip's state.

Why: a text-conditioned world run (text-to-video, text-to-audio, text + frame -> actions) needs
captions whose words are facts of the clip that the other modalities show or sound: how many
balls, each ball's size, colour and material (colour and material go together: wood is orange,
metal blue, rubber green; the material also sets the pitch of its sound), which way the agent
(ball 0) is pushed on average, and how many collisions (audible events) there are, of them how
many between balls. Example::

    2 balls: agent big blue metal, small green rubber; pushed down-left; 3 hits, 1 ball-ball

A caption is a pure function of the clip, so of (config, seed, index). :func:`attributes` reads
it back into class ids (:data:`ATTRIBUTES`), what the text-consistency metric
(:mod:`selfflow.eval.text_consistency`) compares generated clips against. Sizes: ``small`` below
:data:`SIZE_SPLIT` (the middle of the default radius range), else ``big``. Direction: the mean
action of the clip per axis (x right, y down), named when its size is at least
:data:`DIRECTION_MIN` (``up``, ``down-left``, ...; ``nowhere`` when neither axis is).
"""

from __future__ import annotations

import re

import numpy as np

from data_pipelines.world import KIND_BALL, MATERIAL_NAMES
from modalities.text import encode_caption

COLOURS = {"wood": "orange", "metal": "blue", "rubber": "green"}
SIZE_SPLIT = 0.09  # radius: below = small
DIRECTION_MIN = 0.15  # |mean action| per axis that names a direction
HIT_BINS = (0, 1, 3, 6)  # "hits" classes: 0, 1-2, 3-5, 6 or more

# What a caption states, each attribute's classes in id order.
ATTRIBUTES = {
    "balls": ("1", "2", "3"),
    "agent_colour": ("orange", "blue", "green"),
    "agent_size": ("small", "big"),
    "vertical": ("up", "neither", "down"),
    "horizontal": ("left", "neither", "right"),
    "hits": ("0", "1-2", "3-5", "6+"),
}
UNKNOWN = -1  # an attribute the caption does not state (e.g. cut short)
_PATTERNS = {
    "balls": re.compile(r"^([123]) balls?:"),
    "agent": re.compile(r": agent (small|big) (orange|blue|green) "),
    "pushed": re.compile(r"; pushed ([a-z-]+);"),
    "hits": re.compile(r"; (\d+) hits?,"),
}


def direction(actions: np.ndarray) -> str:
    """(T, 2) actions -> ``up``, ``down-right``, ..., or ``nowhere``."""
    mx, my = np.asarray(actions, np.float64).mean(axis=0)
    vertical = ("down" if my > 0 else "up") if abs(my) >= DIRECTION_MIN else ""
    horizontal = ("right" if mx > 0 else "left") if abs(mx) >= DIRECTION_MIN else ""
    return "-".join(w for w in (vertical, horizontal) if w) or "nowhere"


def direction_ids(word: str) -> tuple[int, int]:
    """A :func:`direction` word -> (vertical, horizontal) class ids of :data:`ATTRIBUTES`."""
    parts = word.split("-")
    vertical = 0 if "up" in parts else 2 if "down" in parts else 1
    horizontal = 0 if "left" in parts else 2 if "right" in parts else 1
    return vertical, horizontal


def hits_id(hits: int) -> int:
    """A number of collisions -> its "hits" class (:data:`HIT_BINS`)."""
    return int(np.searchsorted(HIT_BINS, hits, side="right") - 1)


def attributes(text: str) -> dict[str, int]:
    """A caption -> {attribute: class id} for every name of :data:`ATTRIBUTES`; :data:`UNKNOWN`
    where the caption does not say (text that is not a world caption, or one cut at its end)."""
    out = dict.fromkeys(ATTRIBUTES, UNKNOWN)
    if m := _PATTERNS["balls"].search(text):
        out["balls"] = int(m.group(1)) - 1
    if m := _PATTERNS["agent"].search(text):
        out["agent_size"] = ATTRIBUTES["agent_size"].index(m.group(1))
        out["agent_colour"] = ATTRIBUTES["agent_colour"].index(m.group(2))
    if m := _PATTERNS["pushed"].search(text):
        out["vertical"], out["horizontal"] = direction_ids(m.group(1))
    if m := _PATTERNS["hits"].search(text):
        out["hits"] = hits_id(int(m.group(1)))
    return out


def ball_words(material: int, radius: float) -> str:
    name = MATERIAL_NAMES[int(material)]
    return f"{'small' if radius < SIZE_SPLIT else 'big'} {COLOURS[name]} {name}"


def caption(clip: dict) -> str:
    """The caption of one clip (a dict as :func:`data_pipelines.world.simulate` returns)."""
    n = int(clip["num_balls"])
    balls = [ball_words(m, r) for m, r in zip(clip["materials"][:n], clip["radii"][:n])]
    events = np.asarray(clip["events"])[: int(clip["num_events"])]
    between = int(np.sum(events[:, 3] == KIND_BALL)) if len(events) else 0
    hits = int(clip["num_collisions"])
    return (
        f"{n} ball{'s' if n > 1 else ''}: agent {', '.join(balls)}; pushed {direction(clip['actions'])}; "
        f"{hits} hit{'' if hits == 1 else 's'}, {between} ball-ball"
    )


def caption_bytes(clip: dict, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (length,) bytes, uint8 (length,) mask) of the clip's caption, cut at ``length``
    bytes (at a word boundary) if longer: generated data never fails on its own caption."""
    text = caption(clip)
    while len(text.encode("utf-8")) > length:
        text = (
            text.rsplit(" ", 1)[0] if " " in text else text.encode("utf-8")[:length].decode("utf-8", "ignore")
        )
    return encode_caption(text, length)
