"""Frozen pretrained encoders ported to Flax NNX (representation targets such as REPA's, and the
feature extractors of metrics such as FD-DINOv2). Each loads its released weight file, which you
supply; nothing is downloaded."""

from selfflow.encoders.dinov2 import SIZES, Dinov2, Dinov2Arch, load_dinov2, preprocess

__all__ = ["SIZES", "Dinov2", "Dinov2Arch", "load_dinov2", "preprocess"]
