"""Autoencoder weights from the user's ``.safetensors``: every key and shape checked, nothing loaded
partially.

Layouts accepted (detected from the keys):

* diffusers (``AutoencoderKL`` / ``AutoencoderKLFlux2`` ``diffusion_pytorch_model.safetensors``,
  or ``safetensors.torch.save_file(model.state_dict(), ...)``): ``encoder.down_blocks.0.resnets.0.
  conv1.weight`` ... ``quant_conv.weight``, FLUX.2's ``bn.running_mean`` / ``bn.running_var``
  (``bn.num_batches_tracked`` is ignored).
* the original LDM layout, which BFL's FLUX.1 ``ae.safetensors`` and the CompVis/SD single-file
  VAEs use: ``encoder.down.0.block.0.``, ``encoder.mid.attn_1.q`` (1x1 convolutions),
  ``decoder.up.3.`` (levels numbered from the narrowest, so reversed), ``norm_out``,
  ``nin_shortcut``; a ``first_stage_model.`` or ``vae.`` prefix is stripped and, when present, only
  those keys are read (a VAE inside a full Stable Diffusion checkpoint). It is renamed to the
  diffusers names by :func:`ldm_to_diffusers` before any check.
* BFL's FLUX.2 ``ae.safetensors`` (black-forest-labs/flux2 ``src/flux2/autoencoder.py``): the LDM
  names above, with the 1x1 convolutions inside the stacks, ``encoder.quant_conv.`` and
  ``decoder.post_quant_conv.`` (diffusers' top-level ``quant_conv.`` / ``post_quant_conv.``), and
  the 2x2-patch batch-norm statistics under the same names as diffusers (``bn.running_mean``,
  ``bn.running_var``; BFL's ``rearrange(..., "c (i pi) (j pj) -> (c pi pj) i j")`` is our
  :func:`~selfflow.autoencoders.model.patchify` channel order).

A file mixing layouts (diffusers names beside LDM/BFL ones, or two keys for one tensor) is refused
naming both keys; problems in an LDM/BFL file name the file's key and ours. A ``.pth``/``.ckpt``
pickle is refused with the two lines that convert it (reading one needs PyTorch).

Values become float32; torch layouts are transposed to NNX (conv OIHW -> HWIO, linear (out, in) ->
(in, out)).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from selfflow.autoencoders.config import PRESETS, AutoencoderConfig, preset
from selfflow.autoencoders.model import Autoencoder
from selfflow.errors import ParamsError
from selfflow.params import nnx_to_torch, shape_problems, tensor_name, torch_to_nnx

__all__ = ["checkpoint_tensors", "expected_file_shapes", "ldm_to_diffusers", "load_autoencoder"]

_LEAF = {"kernel": "weight", "scale": "weight"}
_IGNORED = ("bn.num_batches_tracked",)
_PREFIXES = ("first_stage_model.", "vae.")
_LDM = re.compile(
    r"^((encoder|decoder)\.(down|up|mid|norm_out)|encoder\.quant_conv|decoder\.post_quant_conv)\."
)
_DIFFUSERS = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_norm_out)\.")
_PICKLES = (".pth", ".pt", ".ckpt", ".bin")
_MAX_LISTED = 24
_FILE_NAMES = ("diffusion_pytorch_model.safetensors", "ae.safetensors", "model.safetensors")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _refuse_pickle(path: Path) -> None:
    """A PyTorch pickle (``Wan2.1_VAE.pth``, ``.ckpt``) needs torch to read: one line with the two
    lines that convert it to safetensors once."""
    if path.suffix.lower() in _PICKLES:
        out = path.with_suffix(".safetensors").name
        raise ParamsError(
            f"{path} is a PyTorch pickle; only .safetensors files are read. Convert it once with "
            f"safetensors.torch.save_file (PyTorch needed): `import torch; from safetensors.torch import "
            f"save_file` then `save_file({{k: v.contiguous() for k, v in torch.load({path.name!r}, "
            f"map_location='cpu').items()}}, {out!r})`, and pass {out}"
        )


# --------------------------------------------------------------------------- names and shapes


def _file_key(nnx_name: str) -> str:
    head, _, leaf = nnx_name.rpartition(".")
    return f"{head}.{_LEAF.get(leaf, leaf)}"


def _abstract(config: AutoencoderConfig) -> Autoencoder:
    return nnx.eval_shape(lambda: Autoencoder(config, rngs=nnx.Rngs(0)))


def _nnx_shapes(model: Autoencoder) -> dict[str, tuple]:
    pure = nnx.to_pure_dict(nnx.state(model))
    return {tensor_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]}


def expected_file_shapes(config: AutoencoderConfig) -> dict[str, tuple[int, ...]]:
    """Diffusers key -> torch-layout shape that a file for ``config`` must hold (from an abstract
    build of :class:`Autoencoder`, so the check can never drift from the model)."""
    out = {}
    for name, shape in _nnx_shapes(_abstract(config)).items():
        out[_file_key(name)] = nnx_to_torch(name, np.empty(shape, np.bool_)).shape
    return out


def checkpoint_tensors(model: Autoencoder) -> dict[str, np.ndarray]:
    """``model``'s weights and statistics under diffusers' keys and torch layouts (what
    :func:`load_autoencoder` reads back)."""
    pure = nnx.to_pure_dict(nnx.state(model))
    out = {}
    for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]:
        name = tensor_name(p)
        out[_file_key(name)] = np.ascontiguousarray(nnx_to_torch(name, np.array(x, np.float32)))
    return out


_LDM_RULES = (
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", lambda m: f"encoder.down_blocks.{m[1]}.resnets.{m[2]}."),
    (r"^encoder\.down\.(\d+)\.downsample\.", lambda m: f"encoder.down_blocks.{m[1]}.downsamplers.0."),
    (r"^(encoder|decoder)\.mid\.block_([12])\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", lambda m: f"{m[1]}.mid_block.attentions.0."),
    (r"^(encoder|decoder)\.norm_out\.", lambda m: f"{m[1]}.conv_norm_out."),
    (r"^encoder\.quant_conv\.", lambda m: "quant_conv."),  # BFL FLUX.2: inside the encoder
    (r"^decoder\.post_quant_conv\.", lambda m: "post_quant_conv."),  # and the decoder
)
_ATTN_LEAVES = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def ldm_to_diffusers(key: str, levels: int) -> str:
    """One LDM/BFL key -> its diffusers name, for a network of ``levels`` resolution levels (the
    decoder's ``up.<i>`` is diffusers' ``up_blocks.<levels - 1 - i>``; BFL FLUX.2's
    ``encoder.quant_conv.`` / ``decoder.post_quant_conv.`` are diffusers' top-level ones). Keys
    without a rule are returned unchanged (``conv_in``, ``conv_out``, ``quant_conv``, ``bn`` ...)."""
    key = key.replace(".nin_shortcut.", ".conv_shortcut.")
    m = re.match(r"^decoder\.up\.(\d+)\.(block\.(\d+)|upsample)\.", key)
    if m:
        inner = f"resnets.{m[3]}." if m[3] is not None else "upsamplers.0."
        return f"decoder.up_blocks.{levels - 1 - int(m[1])}.{inner}" + key[m.end() :]
    for pattern, rename in _LDM_RULES:
        m = re.match(pattern, key)
        if m:
            new, rest = rename(m), key[m.end() :]
            if new.endswith(".attentions.0."):
                for old, hub in _ATTN_LEAVES.items():
                    if rest.startswith(old):
                        rest = hub + rest[len(old) :]
                        break
            return new + rest
    return key


def _normalise(
    raw: dict[str, tuple], levels: int, where: object = "the file"
) -> tuple[str, dict[str, tuple], dict[str, str]]:
    """(layout, {diffusers key: shape}, {diffusers key: file key}); LDM attention projections
    (1x1 convolutions ``(C, C, 1, 1)``) are given their linear shape ``(C, C)``. A file mixing
    the layouts, or holding two keys for one tensor, is a ParamsError naming both keys."""
    prefix = next((p for p in _PREFIXES if any(k.startswith(p) for k in raw)), "")
    raw = {k[len(prefix) :]: s for k, s in raw.items() if k.startswith(prefix)}
    ldm = next((k for k in sorted(raw) if _LDM.match(k)), None)
    if ldm is None:
        return "diffusers", dict(raw), {k: prefix + k for k in raw}
    hub = next((k for k in sorted(raw) if _DIFFUSERS.match(k)), None)
    if hub is not None:
        raise ParamsError(
            f"{where} mixes key layouts: {prefix}{hub} (diffusers) and {prefix}{ldm} (LDM/BFL); "
            f"nothing was loaded"
        )
    shapes, sources = {}, {}
    for key, shape in sorted(raw.items()):
        new = ldm_to_diffusers(key, levels)
        if new in sources:
            raise ParamsError(
                f"{where} mixes key layouts: {sources[new]} and {prefix}{key} are both {new}; "
                f"nothing was loaded"
            )
        if ".attentions.0.to_" in new and new.endswith(".weight") and len(shape) == 4:
            shape = tuple(shape[:2]) if tuple(shape[2:]) == (1, 1) else shape
        shapes[new], sources[new] = tuple(shape), prefix + key
    return "ldm", shapes, sources


def _file_named(problems: list[str], sources: dict[str, str]) -> list[str]:
    """Problems about renamed keys name the file's key too: ``encoder.down.0.block.0.conv1.weight
    (our encoder.down_blocks.0.resnets.0.conv1.weight): shape ...``."""
    out = []
    for p in problems:
        kind, _, rest = p.partition(" ") if p.startswith(("missing ", "unexpected ")) else ("", "", p)
        key = rest.split(":")[0].split(" ")[0]
        if sources.get(key, key) != key:
            rest = f"{sources[key]} (our {key})" + rest[len(key) :]
        out.append(f"{kind} {rest}" if kind else rest)
    return out


# --------------------------------------------------------------------------- resolving the file and config


def _resolve_path(path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in _FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"{path} is a directory without {' or '.join(_FILE_NAMES)}: pass the autoencoder's .safetensors file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no autoencoder weight file at {path}")
    return path


def _config_beside(path: Path) -> AutoencoderConfig | None:
    file = path.parent / "config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ParamsError(f"{file} (beside {path.name}) is not readable JSON: {_one_line(e)}") from None
    if not isinstance(data, dict) or "latent_channels" not in data:
        return None
    try:
        config = AutoencoderConfig.from_diffusers(data)
    except ValueError as e:
        raise ParamsError(f"{file}: {e}") from None
    for name, known in PRESETS.items():  # a released model keeps its name (manifests record it)
        if AutoencoderConfig(**{**vars(config), "name": name}) == known:
            return known
    return config


def _resolve_config(path: Path, config) -> AutoencoderConfig:
    if isinstance(config, AutoencoderConfig):
        return config
    if isinstance(config, str):
        return preset(config)
    if config is None:
        beside = _config_beside(path)
        if beside is not None:
            return beside
        raise ValueError(
            f"{path}: which autoencoder? pass config= one of {', '.join(sorted(PRESETS))} or an "
            f"AutoencoderConfig (no diffusers config.json beside the file)"
        )
    raise TypeError(
        f"config must be a preset name, an AutoencoderConfig or None, got {type(config).__name__}"
    )


def _describe(config: AutoencoderConfig) -> str:
    return (
        f"autoencoder {config.name!r} (widths {list(config.block_out_channels)}, "
        f"{config.latent_channels} latent channels)"
    )


def _listed(problems: list[str]) -> str:
    """Mis-shaped tensors first (they say most about a wrong architecture), at most ``_MAX_LISTED``."""
    problems = sorted(problems, key=lambda p: p.startswith(("missing ", "unexpected ")))
    head = "; ".join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    return head + (f"; ... and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------- loading


def load_autoencoder(path: str | os.PathLike, config: str | AutoencoderConfig | None = None) -> Autoencoder:
    """An :class:`Autoencoder` holding the weights of the safetensors file ``path``.

    Args:
      path: the ``.safetensors`` file (diffusers, LDM or BFL layout, see the module docstring), or a
        directory holding ``diffusion_pytorch_model.safetensors`` / ``ae.safetensors`` (a diffusers
        ``vae/`` folder).
      config: ``"sd-vae"``, ``"flux1"``, ``"flux2"`` (:data:`PRESETS`), an
        :class:`AutoencoderConfig`, or ``None``: the diffusers ``config.json`` beside the file.

    Every key and shape is checked before any value is read: missing, unexpected and mis-shaped
    tensors (and non-finite values) are reported together in one :class:`ParamsError` naming the
    file; nothing is loaded partially. An unreadable or corrupt file is a one-line ``ParamsError``.
    """
    from safetensors import safe_open

    path = _resolve_path(path)
    _refuse_pickle(path)
    try:
        with safe_open(path, framework="numpy") as f:
            raw = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds for a bad file
        raise ParamsError(f"{path} is not a readable safetensors file ({_one_line(e)})") from None
    config = _resolve_config(path, config)
    layout, shapes, sources = _normalise(raw, len(config.block_out_channels), path)
    for key in _IGNORED:
        shapes.pop(key, None)
    expected = expected_file_shapes(config)
    what = f"{path} ({layout} layout) does not match {_describe(config)}"
    if not set(expected) & set(shapes):
        sample = ", ".join(sorted(shapes)[:3]) or "nothing"
        raise ParamsError(
            f"{path} is not an autoencoder checkpoint: no tensor has an autoencoder name ({sample}...)"
        )
    problems = _file_named(shape_problems(expected, shapes), sources)
    if problems:
        raise ParamsError(f"{what} (nothing was loaded): {_listed(problems)}")

    arrays, bad = {}, []
    try:
        with safe_open(path, framework="numpy") as f:
            for key in expected:
                arr = np.asarray(f.get_tensor(sources[key]), np.float32).reshape(expected[key])
                if not np.isfinite(arr).all():
                    bad.append(f"{key} has {int((~np.isfinite(arr)).sum())} non-finite values")
                arrays[key] = arr
    except Exception as e:  # noqa: BLE001 - a truncated payload fails only when read
        raise ParamsError(f"{path}: corrupt tensor data ({_one_line(e)}); nothing was loaded") from None
    if bad:
        raise ParamsError(f"{what} (nothing was loaded): {_listed(bad)}")

    model = _abstract(config)
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    filled = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.numpy.asarray(
            torch_to_nnx(tensor_name(p), arrays[_file_key(tensor_name(p))]), x.dtype
        ),
        pure,
    )
    nnx.replace_by_pure_dict(state, filled)
    return nnx.merge(graphdef, state)
