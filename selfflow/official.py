"""The official Self-Flow PyTorch checkpoint layout (black-forest-labs/Self-Flow, ``src/model.py``):
conversion both ways, and loading a released ``.pt`` as one of our models.

The official ``SelfFlowPerTokenDiT`` is our image-only trunk with four differences of convention,
all undone here exactly (no retraining, no approximation beyond float rounding):

1. **Time.** Its ``forward`` embeds s = 1 − τ (SiT time, s = 1 data), as our default
   ``model.time_embedding="sit"``: the kernels are copied. Runs made with ``"tau"`` (they embed τ)
   are exported by folding a fixed map into the first timestep-MLP kernel: per frequency ω,
   [cos ω(1−τ), sin ω(1−τ)] = [[cos ω, sin ω], [sin ω, −cos ω]] · [cos ωτ, sin ωτ] (float64, then
   float32: exact up to one rounding).
2. **Sign.** It returns −(its net output) so that its velocity is ε − x0, as ours: the final linear
   layer is negated.
3. **Output order.** Its final linear layer emits (p q c') per token and ``shufflechannel`` reorders
   to (c p q), our token order; with ``learn_sigma`` c' = 2C and the last C channels (the unused
   variance) are dropped — on export they are written as zeros.
4. **Labels.** Its table has ``num_classes`` rows with the null class ``num_classes − 1`` (the
   released model: 1001 rows, null 1000); ours has ``num_classes + 1`` rows with null
   ``num_classes``: the same table, our ``num_classes`` is one less.

Torch Linear weights are (out, in), our kernels (in, out). ``pos_embed`` is the fixed 2-D sin-cos
table, which our model computes (``layers.sincos_2d``, same layout); on import it must match.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from modalities import image as image_mod
from selfflow.model import SelfFlowTransformer

# The released ImageNet-256 checkpoint (selfflow_imagenet256.pt): SiT-XL/2 on 32×32×4 SD-VAE latents,
# as constructed by the official sample.py.
RELEASED_XL2 = dict(
    input_size=32,
    patch_size=2,
    in_channels=4,
    hidden_size=1152,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    num_classes=1001,
    learn_sigma=True,
)
ARCH_KEYS = tuple(RELEASED_XL2)
POS_EMBED_TOLERANCE = 1e-4  # a stored table further than this from ours is not the fixed table


class OfficialFormatError(ValueError):
    """A checkpoint that does not fit the official layout (lists every problem)."""


def _check_architecture(arch: dict) -> dict:
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise OfficialFormatError(
            f"unknown architecture keyword(s) {unknown}; expected some of {list(ARCH_KEYS)}"
        )
    arch = {**RELEASED_XL2, **arch}
    if arch["input_size"] % arch["patch_size"]:
        raise OfficialFormatError(
            f"input_size={arch['input_size']} is not divisible by patch_size={arch['patch_size']}"
        )
    if arch["hidden_size"] % arch["num_heads"] or arch["hidden_size"] % 4:
        raise OfficialFormatError(
            f"hidden_size={arch['hidden_size']}: expected a multiple of num_heads="
            f"{arch['num_heads']} and of 4 (the 2-D sin-cos table)"
        )
    if arch["num_classes"] < 2:
        raise OfficialFormatError(
            f"num_classes={arch['num_classes']}: expected >= 2 (the classes and the null class)"
        )
    return arch


def image_spec(arch: dict) -> image_mod.ImageSpec:
    return image_mod.ImageSpec(
        arch["input_size"], arch["input_size"], arch["in_channels"], arch["patch_size"]
    )


def expected_shapes(arch: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the official state dict and its shape."""
    d, p, c = arch["hidden_size"], arch["patch_size"], arch["in_channels"]
    mlp = int(d * arch["mlp_ratio"])
    out = p * p * c * (2 if arch["learn_sigma"] else 1)
    n = (arch["input_size"] // p) ** 2
    shapes = {
        "x_embedder.proj.weight": (d, c * p * p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (arch["num_classes"], d),
        "pos_embed": (1, n, d),
        "final_layer.linear.weight": (out, d),
        "final_layer.linear.bias": (out,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
        "projector.linear1.weight": (2 * d, d),
        "projector.linear1.bias": (2 * d,),
        "projector.linear2.weight": (d, 2 * d),
        "projector.linear2.bias": (d,),
    }
    for i in range(arch["depth"]):
        for name, (o, k) in {
            "attn.qkv": (3 * d, d),
            "attn.proj": (d, d),
            "mlp.fc1": (mlp, d),
            "mlp.fc2": (d, mlp),
            "adaLN_modulation.1": (6 * d, d),
        }.items():
            shapes[f"blocks.{i}.{name}.weight"] = (o, k)
            shapes[f"blocks.{i}.{name}.bias"] = (o,)
    return shapes


def pos_embed_table(arch: dict) -> np.ndarray:
    """(1, N, D) float32 fixed sin-cos table, computed in float64 as the official initialisation."""
    pos = image_mod.positions(image_spec(arch)).astype(np.float64)
    quarter = arch["hidden_size"] // 4
    omega = 1.0 / 10_000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def axis(values):
        args = values[:, None] * omega
        return np.concatenate([np.sin(args), np.cos(args)], axis=1)

    table = np.concatenate([axis(pos[:, 2]), axis(pos[:, 1])], axis=1)  # (w, h), as layers.sincos_2d
    return table[None].astype(np.float32)


def flip_time(kernel: np.ndarray, freq_dim: int = 256) -> np.ndarray:
    """(256, D) first timestep kernel acting on features of τ <-> one acting on features of 1 − τ.

    Rows are [cos ω_i·, sin ω_i·]; the map is symmetric and its own inverse (see module docstring).
    Frequencies are the float32 values the sinusoid uses.
    """
    half = freq_dim // 2
    freqs = np.exp(-math.log(10_000.0) * np.arange(half, dtype=np.float32) / half).astype(np.float32)
    cos, sin = np.cos(freqs.astype(np.float64))[:, None], np.sin(freqs.astype(np.float64))[:, None]
    k = kernel.astype(np.float64)
    top, bottom = k[:half], k[half:]
    return np.concatenate([cos * top + sin * bottom, sin * top - cos * bottom]).astype(np.float32)


def _out_rows(arch: dict) -> np.ndarray:
    """Official final-layer rows (p q c') of the velocity, listed in our column order (c p q)."""
    p, c = arch["patch_size"], arch["in_channels"]
    out = c * (2 if arch["learn_sigma"] else 1)
    ci, pi, qi = np.meshgrid(np.arange(c), np.arange(p), np.arange(p), indexing="ij")
    return ((pi * p + qi) * out + ci).reshape(-1)


def _linear_pairs(depth: int) -> list[tuple[str, str]]:
    """(official prefix, our prefix) of every Linear copied as is (transposed)."""
    pairs = [
        ("x_embedder.proj", "x_embedders.image"),
        ("t_embedder.mlp.2", "t_embedder.fc2"),
        ("final_layer.adaLN_modulation.1", "final_layers.image.adaLN_modulation"),
        ("projector.linear1", "projector.fc1"),
        ("projector.linear2", "projector.fc2"),
    ]
    for i in range(depth):
        pairs += [
            (f"blocks.{i}.{name}", f"blocks.{i}.{ours}")
            for name, ours in (
                ("attn.qkv", "attn.qkv"),
                ("attn.proj", "attn.proj"),
                ("mlp.fc1", "mlp.fc1"),
                ("mlp.fc2", "mlp.fc2"),
                ("adaLN_modulation.1", "adaLN_modulation"),
            )
        ]
    return pairs


def to_official(
    params: dict[str, np.ndarray], arch: dict, time_embedding: str = "sit"
) -> dict[str, np.ndarray]:
    """Our flat params ("blocks.0.attn.qkv.kernel": array) -> the official state dict (float32).

    ``time_embedding``: the model's ``model.time_embedding`` ("tau" kernels are mapped, see above).
    """
    arch = _check_architecture(arch)
    sd = {}
    for off, ours in _linear_pairs(arch["depth"]):
        sd[f"{off}.weight"] = np.ascontiguousarray(params[f"{ours}.kernel"].T)
        sd[f"{off}.bias"] = params[f"{ours}.bias"]
    fc1 = params["t_embedder.fc1.kernel"]
    sd["t_embedder.mlp.0.weight"] = np.ascontiguousarray(
        (flip_time(fc1) if time_embedding == "tau" else fc1).T
    )
    sd["t_embedder.mlp.0.bias"] = params["t_embedder.fc1.bias"]
    sd["y_embedder.embedding_table.weight"] = params["y_embedder.embedding"]
    sd["pos_embed"] = pos_embed_table(arch)
    shapes = expected_shapes(arch)
    rows = _out_rows(arch)
    weight = np.zeros(shapes["final_layer.linear.weight"], np.float32)  # variance rows stay zero
    bias = np.zeros(shapes["final_layer.linear.bias"], np.float32)
    weight[rows] = -params["final_layers.image.linear.kernel"].T
    bias[rows] = -params["final_layers.image.linear.bias"]
    sd["final_layer.linear.weight"], sd["final_layer.linear.bias"] = weight, bias
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    problems = [f"{k}: shape {sd[k].shape}, expected {s}" for k, s in shapes.items() if sd[k].shape != s]
    if problems:
        raise OfficialFormatError(
            f"our parameters do not fit the official architecture {arch}: " + "; ".join(problems)
        )
    return sd


def check_state_dict(sd: dict, arch: dict, where: str) -> None:
    """Raises one error listing every missing, unexpected, mis-shaped or non-tensor entry."""
    shapes = expected_shapes(arch)
    problems = [f"missing {k} {s}" for k, s in shapes.items() if k not in sd]
    problems += [
        f"unexpected {k}" + (f" {tuple(np.shape(v))}" if hasattr(v, "shape") else f" ({type(v).__name__})")
        for k, v in sd.items()
        if k not in shapes
    ]
    problems += [
        f"{k}: shape {tuple(sd[k].shape)}, expected {s}"
        for k, s in shapes.items()
        if k in sd and tuple(sd[k].shape) != s
    ]
    if problems:
        shown = problems[:40] + ([f"... and {len(problems) - 40} more"] if len(problems) > 40 else [])
        raise OfficialFormatError(
            f"{where} does not match the official architecture "
            f"{ {k: arch[k] for k in ARCH_KEYS} }: {len(problems)} problem(s): " + "; ".join(shown)
        )
    table = pos_embed_table(arch)
    gap = float(np.max(np.abs(np.asarray(sd["pos_embed"], np.float32) - table)))
    if not gap <= POS_EMBED_TOLERANCE:
        raise OfficialFormatError(
            f"{where}: pos_embed differs from the fixed 2-D sin-cos table by {gap:.3g} "
            f"(> {POS_EMBED_TOLERANCE}); only the fixed table is supported"
        )


def from_official(sd: dict[str, np.ndarray], arch: dict, where: str = "state dict") -> dict[str, np.ndarray]:
    """The official state dict -> our flat params (float32) for ``time_embedding="sit"``; checks it
    first (see check_state_dict)."""
    arch = _check_architecture(arch)
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    check_state_dict(sd, arch, where)
    params = {}
    for off, ours in _linear_pairs(arch["depth"]):
        params[f"{ours}.kernel"] = np.ascontiguousarray(sd[f"{off}.weight"].T)
        params[f"{ours}.bias"] = sd[f"{off}.bias"]
    params["t_embedder.fc1.kernel"] = np.ascontiguousarray(sd["t_embedder.mlp.0.weight"].T)
    params["t_embedder.fc1.bias"] = sd["t_embedder.mlp.0.bias"]
    params["y_embedder.embedding"] = sd["y_embedder.embedding_table.weight"]
    rows = _out_rows(arch)
    params["final_layers.image.linear.kernel"] = np.ascontiguousarray(
        -sd["final_layer.linear.weight"][rows].T
    )
    params["final_layers.image.linear.bias"] = -sd["final_layer.linear.bias"][rows]
    return params


# ---------------------------------------------------------------------------- files


def read_pt(path, key: str | None = None) -> dict[str, np.ndarray]:
    """A ``.pt`` state dict as float32 numpy arrays, loaded with ``weights_only=True`` (no code runs).

    Wrappers are unwrapped as the official loader does: ``key`` if given, else "model", else
    "state_dict"; a "module." prefix (DDP) is removed.
    """
    torch = _torch()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused or not a torch file
        raise OfficialFormatError(
            f"{path}: not a weights-only PyTorch checkpoint (torch.load with "
            f"weights_only=True refused it: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(obj, dict):
        raise OfficialFormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for wrapper in [key] if key else ["model", "state_dict"]:
        if wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
        if key:
            raise OfficialFormatError(f"{path}: no entry {key!r} (top-level keys: {sorted(obj)[:20]})")
    out, bad = {}, []
    for k, v in obj.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if isinstance(v, torch.Tensor):
            out[k] = v.detach().to(torch.float32).numpy()
        else:
            bad.append(f"{k} ({type(v).__name__})")
    if bad:
        raise OfficialFormatError(f"{path}: entries that are not tensors: {', '.join(bad[:20])}")
    return out


def write_pt(sd: dict[str, np.ndarray], path) -> Path:
    """Writes a plain state dict ``torch.save`` file the official ``load_state_dict`` accepts."""
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.tensor(np.asarray(v)) for k, v in sd.items()}, path)
    return path


def _torch():
    try:
        import torch
    except ImportError:
        raise OfficialFormatError(
            "reading or writing official .pt checkpoints needs PyTorch: "
            "pip install 'selfflow[torch]' (or torch)"
        ) from None
    return torch


# ---------------------------------------------------------------------------- our model


def build_from_params(params: dict[str, np.ndarray], arch: dict) -> SelfFlowTransformer:
    """Our transformer with the architecture ``arch`` holding ``params`` (flat, our names)."""
    arch = _check_architecture(arch)
    spec = image_spec(arch)
    abstract = nnx.eval_shape(
        lambda: SelfFlowTransformer(
            depth=arch["depth"],
            hidden_size=arch["hidden_size"],
            num_heads=arch["num_heads"],
            mlp_ratio=arch["mlp_ratio"],
            num_classes=arch["num_classes"] - 1,
            token_dims={"image": spec.token_dim},
            positions="sincos",
            time_embedding="sit",
            rngs=nnx.Rngs(0),
        )
    )
    from selfflow.params import assign_params

    return assign_params(abstract, params, "the converted official parameters")


@nnx.jit
def _velocity(model, x, t, y, positions):
    return model((x,), t, y, positions, modalities=("image",)).velocity[0]


@nnx.jit(static_argnames=("layer", "projected"))
def _features(model, x, t, y, positions, layer, projected):
    hidden = model.forward_until((x,), t, y, positions, layer=layer, modalities=("image",))
    return model.project(hidden) if projected else hidden


@dataclasses.dataclass
class OfficialModel:
    """An official checkpoint as our model, called with the official interface.

    x: (B, N, C·p·p) patch tokens in (c p q) order, N = (input_size / p)², row-major;
    t: (B,) or (B, N), τ = 1 meaning noise; y: (B,) int, null class = num_classes − 1.
    """

    model: SelfFlowTransformer
    architecture: dict
    positions: np.ndarray  # (N, 3) (t, h, w) token coordinates

    def velocity(self, x, t, y) -> jax.Array:
        """ε − x0, (B, N, C·p·p): what the official ``forward(x, t, y)`` returns."""
        return _velocity(
            self.model,
            jnp.asarray(x, jnp.float32),
            jnp.asarray(t, jnp.float32),
            jnp.asarray(y, jnp.int32),
            jnp.asarray(self.positions),
        )

    def features(self, x, t, y, layer: int, projected: bool = True) -> jax.Array:
        """Hidden state (B, N, D) after block ``layer`` (1-indexed), through the projector if
        ``projected``: the official ``forward(..., return_features=layer)`` (or
        ``return_raw_features=layer``) second output."""
        return _features(
            self.model,
            jnp.asarray(x, jnp.float32),
            jnp.asarray(t, jnp.float32),
            jnp.asarray(y, jnp.int32),
            jnp.asarray(self.positions),
            layer,
            projected,
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """The official state dict of these weights."""
        from selfflow.params import flatten

        return to_official(flatten(nnx.to_pure_dict(nnx.state(self.model, nnx.Param))), self.architecture)


def load_official(path, key: str | None = None, **architecture: Any) -> OfficialModel:
    """Loads an official ``.pt`` (weights only) as :class:`OfficialModel`.

    ``architecture``: the official constructor's keywords (input_size, patch_size, in_channels,
    hidden_size, depth, num_heads, mlp_ratio, num_classes, learn_sigma); defaults are the released
    ImageNet-256 SiT-XL/2 checkpoint's (:data:`RELEASED_XL2`).
    """
    arch = _check_architecture(architecture)
    params = from_official(read_pt(path, key), arch, where=str(path))
    return OfficialModel(build_from_params(params, arch), arch, image_mod.positions(image_spec(arch)))
