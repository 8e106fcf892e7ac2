"""The same model and Self-Flow train step in PyTorch, for ``selfflow bench``'s comparison.

Only imported when torch is installed (the ``torch`` extra). One modality; the architecture,
parameter values (loaded from our pure param dict), conditioning and step are ours, written
idiomatically for PyTorch eager: the factored conditioning (timestep MLP and adaLN on the
[t, s, 0] rows of each sample, gathered per token), the teacher stopping after block
``teacher_layer`` under ``no_grad``, fused ``scaled_dot_product_attention``, AdamW (PyTorch's
foreach implementation, constant learning rate: no warm-up schedule) after global-norm clipping,
and an in-place EMA (``_foreach_lerp_``).
So the bench compares frameworks on one algorithm. ``tests/test_torch_step.py`` checks that
velocity, features, loss, gradients and the optimizer step equal the JAX ones.

Shapes: x0, noise (B, N, C); t, s (B,); mask (B, N) bool (masked tokens at s); labels (B,).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from selfflow import layers
from selfflow.config import Config, resolve


def _linear(p: dict) -> nn.Linear:
    kernel = torch.tensor(np.asarray(p["kernel"], np.float32))
    layer = nn.Linear(*kernel.shape)
    with torch.no_grad():
        layer.weight.copy_(kernel.T)
        layer.bias.copy_(torch.tensor(np.asarray(p["bias"], np.float32)))
    return layer


def _norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _rows(values, index):
    """(B, K, F) rows gathered per token by index (B, N) -> (B, N, F)."""
    return torch.gather(values, 1, index[..., None].expand(-1, -1, values.shape[-1]))


class Block(nn.Module):
    def __init__(self, p: dict, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = _linear(p["attn"]["qkv"]), _linear(p["attn"]["proj"])
        self.fc1, self.fc2 = _linear(p["mlp"]["fc1"]), _linear(p["mlp"]["fc2"])
        self.ada = _linear(p["adaLN_modulation"])

    def forward(self, x, c, index):
        mod = _rows(self.ada(F.silu(c)), index)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        b, n, d = x.shape
        h = _norm(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).reshape(b, n, 3 * self.heads, d // self.heads).transpose(1, 2).chunk(3, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + gate1 * self.proj(attn)
        h = _norm(x) * (1 + scale2) + shift2
        return x + gate2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class TorchSelfFlow(nn.Module):
    """Our SelfFlowTransformer for one modality, initialised from its pure param dict."""

    def __init__(
        self,
        params: dict,
        *,
        heads: int,
        positions: np.ndarray,
        modality: str = "image",
        time_embedding: str = "sit",
    ):
        super().__init__()
        self.sit = time_embedding == "sit"
        self.x_embed = _linear(params["x_embedders"][modality])
        self.t_fc1, self.t_fc2 = _linear(params["t_embedder"]["fc1"]), _linear(params["t_embedder"]["fc2"])
        self.y_embed = nn.Embedding.from_pretrained(
            torch.tensor(np.asarray(params["y_embedder"]["embedding"], np.float32)), freeze=False
        )  # a copy
        self.blocks = nn.ModuleList([Block(params["blocks"][i], heads) for i in range(len(params["blocks"]))])
        final = params["final_layers"][modality]
        self.final_ada, self.final = _linear(final["adaLN_modulation"]), _linear(final["linear"])
        self.proj1, self.proj2 = _linear(params["projector"]["fc1"]), _linear(params["projector"]["fc2"])
        width = self.x_embed.out_features
        table = np.asarray(layers.sincos_2d(np.asarray(positions), width), np.float32)
        self.register_buffer("pos", torch.tensor(table)[None])
        half = 128  # 256 sinusoid frequencies, as layers.TimestepEmbedder
        self.register_buffer(
            "freqs", torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
        )

    def _embed(self, x, values, labels):
        tau = 1 - values if self.sit else values
        args = tau[..., None] * self.freqs
        t = self.t_fc2(F.silu(self.t_fc1(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))))
        return self.x_embed(x) + self.pos, t + self.y_embed(labels)[:, None]

    def forward(self, x, values, index, labels, return_layer: int | None = None):
        """Velocity (B, N, C) and, with ``return_layer``, the hidden state after that block."""
        x, c = self._embed(x, values, labels)
        hidden = None
        for i, block in enumerate(self.blocks):
            x = block(x, c, index)
            if i + 1 == return_layer:
                hidden = x
        shift, scale = _rows(self.final_ada(F.silu(c)), index).chunk(2, dim=-1)
        return self.final(_norm(x) * (1 + scale) + shift), hidden

    def forward_until(self, x, values, index, labels, layer: int):
        x, c = self._embed(x, values, labels)
        for block in self.blocks[:layer]:
            x = block(x, c, index)
        return x

    def project(self, hidden):
        return self.proj2(F.silu(self.proj1(hidden)))


class TorchSelfFlowStep:
    """One optimizer step of flow matching or Self-Flow with given randomness (see module doc)."""

    def __init__(self, cfg: Config, kind: str, params: dict, positions: np.ndarray, modality: str = "image"):
        m, o = cfg.model, cfg.objective
        make = lambda: TorchSelfFlow(
            params,
            heads=m.resolved("num_heads"),
            positions=positions,  # noqa: E731
            modality=modality,
            time_embedding=m.time_embedding,
        )
        self.student, self.teacher = make(), make().requires_grad_(False)
        self.kind, self.gamma, self.decay = kind, o.gamma, o.ema_decay
        self.student_layer, self.teacher_layer = cfg.student_layer, cfg.teacher_layer
        self.params = [p for p in self.student.parameters()]
        self.ema = [p for p in self.teacher.parameters()]
        oc = cfg.optim
        self.clip = oc.grad_clip_norm
        self.opt = torch.optim.AdamW(
            self.params,
            lr=oc.learning_rate,
            betas=(oc.b1, oc.b2),
            eps=1e-8,
            weight_decay=oc.weight_decay,
            foreach=True,
        )

    def loss(self, x0, labels, noise, t, s, mask):
        """(loss, fm, rep) as tensors; gradients flow into the student only."""
        zero = torch.zeros_like(t)
        self_flow = self.kind == "self_flow"
        s = s if self.kind != "flow_matching" else t
        index = mask.long() if self.kind != "flow_matching" else torch.zeros_like(mask, dtype=torch.long)
        tau = (
            torch.where(mask, s[:, None], t[:, None])[..., None]
            if self.kind != "flow_matching"
            else t[:, None, None]
        )
        velocity, hidden = self.student(
            (1 - tau) * x0 + tau * noise,
            torch.stack([t, s, zero], 1),
            index,
            labels,
            self.student_layer if self_flow else None,
        )
        fm = F.mse_loss(velocity, noise - x0)
        if not self_flow:
            return fm, fm, torch.zeros(())
        with torch.no_grad():
            tmin = torch.minimum(t, s)
            target = self.teacher.forward_until(
                (1 - tmin[:, None, None]) * x0 + tmin[:, None, None] * noise,
                torch.stack([tmin, tmin, zero], 1),
                torch.zeros_like(index),
                labels,
                self.teacher_layer,
            )
        a, b = self.student.project(hidden), target
        cos = (a * b).sum(-1) / torch.clamp(a.norm(dim=-1) * b.norm(dim=-1), min=1e-6)
        rep = 1 - cos.mean()
        return fm + self.gamma * rep, fm, rep

    def step(self, x0, labels, noise, t, s, mask) -> float:
        loss, _, _ = self.loss(x0, labels, noise, t, s, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1.0 - self.decay)
        return loss.detach()


def random_inputs(
    batch: int, tokens: int, channels: int, num_classes: int, mask_ratio: float, seed: int = 0
) -> dict:
    """x0, labels, noise, t, s and a mask with round(mask_ratio·N) True per row."""
    g = torch.Generator().manual_seed(seed)
    count = round(mask_ratio * tokens)
    mask = torch.rand(batch, tokens, generator=g).argsort(-1).argsort(-1) < count
    return {
        "x0": torch.randn(batch, tokens, channels, generator=g),
        "labels": torch.randint(0, num_classes, (batch,), generator=g),
        "noise": torch.randn(batch, tokens, channels, generator=g),
        "t": torch.rand(batch, generator=g),
        "s": torch.rand(batch, generator=g),
        "mask": mask,
    }


def build_bench_step(
    cfg: Config, kind: str, params: dict, batch: int, tokens: int, channels: int, positions: np.ndarray
):
    """(step, inputs) for timing ``step.step(**inputs)``."""
    step = TorchSelfFlowStep(cfg, kind, params, positions)
    cfg = resolve(cfg)
    ratio = next(m.mask_ratio for m in cfg.modalities if m.name == "image")
    return step, random_inputs(batch, tokens, channels, cfg.data.num_classes, ratio)
