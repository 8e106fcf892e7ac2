"""A PyTorch model that follows the official Self-Flow architecture (black-forest-labs/Self-Flow,
``src/model.py``: ``SelfFlowPerTokenDiT``), written for the parity tests.

Same parameter names and shapes as the official state dict, and the official forward semantics:
``forward(x, timesteps, vector)`` embeds 1 − τ, conditions every token on its own timestep,
reorders the output (p q c) -> (c p q), drops the variance half when ``learn_sigma`` and returns
the negated result; ``return_features=l`` / ``return_raw_features=l`` also return the projected /
raw hidden state after block l. Attention is timm's (fused qkv, heads-major split, 1/√K scale).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def sincos_pos_embed(dim: int, grid: int) -> np.ndarray:
    """(grid², dim) fixed table: as MAE/DiT, the first half from meshgrid's first output (columns)."""
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))

    def one(values, d):
        omega = 1.0 / 10_000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        args = values.reshape(-1)[:, None] * omega
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)

    return np.concatenate([one(cols, dim // 2), one(rows, dim // 2)], axis=1)


class Timesteps(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Labels(nn.Module):
    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes, hidden)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):  # c: (B, N, D) per token
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + g1 * self.attn(_norm(x) * (1 + sc1) + s1)
        return x + g2 * self.mlp(_norm(x) * (1 + sc2) + s2)


class Final(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(_norm(x) * (1 + scale) + shift)


class Head(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.linear2(F.silu(self.linear1(x)))


class PatchEmbed(nn.Module):
    def __init__(self, din: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(din, dim)


class OfficialSelfFlow(nn.Module):
    def __init__(
        self,
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        num_classes=1000,
        learn_sigma=False,
    ):
        super().__init__()
        self.patch_size, self.in_channels, self.learn_sigma = patch_size, in_channels, learn_sigma
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        grid = input_size // patch_size
        self.x_embedder = PatchEmbed(in_channels * patch_size**2, hidden_size)
        self.t_embedder = Timesteps(hidden_size)
        self.y_embedder = Labels(num_classes, hidden_size)
        table = torch.from_numpy(sincos_pos_embed(hidden_size, grid)).float()[None]
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.blocks = nn.ModuleList([Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = Final(hidden_size, patch_size**2 * self.out_channels)
        self.projector = Head(hidden_size)

    def randomize(self, seed: int, scale: float = 0.15) -> OfficialSelfFlow:
        """Random non-zero values in every trainable tensor (the zero-initialised ones included)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name != "pos_embed":
                    p.copy_(torch.randn(p.shape, generator=g) * scale)
        return self

    def forward(self, x, timesteps, vector, return_features=None, return_raw_features=None):
        s = 1 - timesteps  # the official forward works in SiT time
        x = self.x_embedder.proj(x) + self.pos_embed
        b, n, _ = x.shape
        t_emb = (
            self.t_embedder(s)[:, None].expand(-1, n, -1)
            if s.ndim == 1
            else self.t_embedder(s.reshape(-1)).reshape(b, n, -1)
        )
        c = t_emb + self.y_embedder.embedding_table(vector)[:, None].expand(-1, n, -1)
        feats = None
        for i, block in enumerate(self.blocks):
            x = block(x, c)
            if i + 1 == return_features:
                feats = self.projector(x)
            elif i + 1 == return_raw_features:
                feats = x
        out = self.final_layer(x, c)
        p, co = self.patch_size, self.out_channels
        out = (
            out.reshape(b, n, p, p, co).permute(0, 1, 4, 2, 3).reshape(b, n, co * p * p)
        )  # (p q c) -> (c p q)
        if self.learn_sigma:
            out = out[..., : self.in_channels * p * p]
        return -out if feats is None else (-out, feats)
