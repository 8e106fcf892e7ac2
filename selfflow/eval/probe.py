"""Linear-probe accuracy of the transformer's own features, layer by layer.

Why: the paper's representation claim is that self-distillation makes the trunk's hidden states
linearly separable by class, more so than plain flow matching. This measures it for a run's EMA
model: hidden states after block l, mean-pooled over tokens, fed to a linear classifier trained
on training examples and scored on held-out ones.

Features (:func:`probe_features`): images tokenised with the run's spec, the model run by
``forward_until`` at one fixed τ for every token, with the **null class label** for every example
- with the true label the class would sit in the conditioning (the label embedding enters every
block's adaLN), and the probe would read it from there instead of from the image. Default
τ = 0 (clean inputs: what the paper probes, and what makes the probe a property of the image,
not of the noise draw); τ > 0 noises the tokens with a fixed noise per batch, x_τ = (1 − τ) x + τ ε.

Classifier (:func:`linear_probe`): multinomial logistic regression on features standardised with
the training examples' mean and std, an L2 penalty on the weights, fitted from zeros by a fixed
number of full-batch L-BFGS steps (optax). The penalty is chosen from ``L2_GRID`` by accuracy on a
validation split (a seeded 20 % of the training examples; ties go to the stronger penalty), then
the probe is refitted on every training example. No minibatches, no random initialisation: the
accuracy is a deterministic function of the features. Why not closed-form ridge regression onto
one-hot targets: least squares is not a consistent classifier for more than two classes - on
features whose labels are the argmax of a linear map of them (a perfectly linear signal) it
reached 0.86 (4 classes, 2000 examples) and 0.72 (10 classes, 3000) where this probe reaches
0.97 and 0.92, so it would understate how linear a representation is.

Held-out examples are ``Task``'s (another seed for the procedural sources, the test split of
Fashion-MNIST; for file folders the training files themselves, so there the accuracy is not
held out).

Baselines (:func:`probe_table`): an accuracy means something only beside what the same probe
reaches without the trained trunk. The table has, at each τ of ``taus`` (default 0 and 0.5):

- ``pixels``: the probe on the tokens the model reads, flattened to (n, N·d_token) - at τ > 0 the
  same noised tokens (bit-identical: one jitted function makes both), at τ = 0 the clean ones.
  Mind its size: d = N·d_token features (4096 for 32x32x4 latents, 196608 for 256x256 RGB).
- ``random/layer_<l>``: the same architecture freshly built (``build_model(task.cfg, ...)``, the
  run's seed), probed at the same blocks. With this codebase's adaLN-zero init every block's
  modulation layer (kernel and bias) starts at zero, so its gates are 0 and each block returns
  its input exactly: the hidden state after *any* block is the input embedding (token projection,
  plus the sincos positions unless the run uses rope), and neither τ's embedding nor the label
  enters it. Mean-pooled, that is a
  random linear map (d_token -> D) of the token-mean plus a constant, so this row is the same at
  every block (verified: equal features after blocks 1 and 2, tests/test_probe.py) - a "random
  projection of the average patch" baseline, not a random deep network's features.
- ``layer_<l>``: the model's blocks, as :func:`layer_probe`.

Each accuracy p comes with its binomial standard error sqrt(p (1 − p) / n_test)
(:func:`standard_error`); the table's default n_test = 2500 makes it at most 0.01 (at p = 0.5),
so differences of a few points between rows are resolved. The held-out examples are drawn from
an infinite stream; a held-out set smaller than n_test repeats examples and the error is then
understated.

Command: ``.venv/bin/python -m selfflow.eval.probe RUN_DIR [--layers 1 2 3] [--n-train 4096]``
prints {layer: accuracy} as JSON; ``--baselines [--taus 0 0.5]`` prints the table (Markdown, one
row per feature set, one column per τ, "accuracy ± standard error"); ``--weights online`` probes
the trained parameters instead of the EMA.
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import modalities
from data_pipelines import loader
from selfflow.model import build_model
from selfflow.objective import interpolate
from selfflow.tasks import Task

TAU = 0.0
TAUS = (0.0, 0.5)  # the table's noise levels
WEIGHTS = ("ema", "online")  # a run's EMA or trained parameters
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # penalties on the standardised features' weights
VAL_FRACTION = 0.2
ITERATIONS = 100  # full-batch L-BFGS steps per fit
PROBED_MODALITIES = ("image", "video", "audio")  # one array per example (action tokens also need proprio)


# ---------------------------------------------------------------------------- the linear probe


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature of (n, d) float64 x; constant features get std 1 (they become 0)."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 1e-12 * max(float(std.max(initial=0.0)), 1e-300), std, 1.0)


@functools.partial(jax.jit, static_argnames=("num_classes", "iterations"))
def _fit_logistic(x, y, weight, l2, *, num_classes: int, iterations: int):
    """Multinomial logistic regression on (x (n, d), y (n,)): (W (d, K), b (K,)) minimising the
    ``weight``-ed (n,) mean cross-entropy + l2/2 ||W||², from zeros, by ``iterations`` full-batch
    L-BFGS steps (zoom line search). Weights of 0 leave rows out (the validation split) without
    changing the shapes, so the search and the final fit share one compilation."""

    def loss(params):
        w, b = params
        ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y)
        return jnp.sum(weight * ce) / jnp.sum(weight) + 0.5 * l2 * jnp.sum(w * w)

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))
    return jax.lax.fori_loop(0, iterations, step, (params, opt.init(params)))[0]


def _check_xy(name: str, x, y, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"{name}: features {x.shape} and labels {y.shape}; expected (n, d) and (n,)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: features contain NaN or infinite values")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name}: labels in [{y.min()}, {y.max()}], expected [0, {num_classes})")
    return x, y.astype(np.int64)


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    num_classes: int,
    *,
    l2_grid=L2_GRID,
    val_fraction: float = VAL_FRACTION,
    iterations: int = ITERATIONS,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe fitted on (train_x (n, d), train_y (n,)) and
    scored on (test_x (m, d), test_y (m,)); labels int in [0, num_classes). The l2 strength is
    chosen on a ``seed``-ed ``val_fraction`` of the training examples (see the module docstring).
    Deterministic: the same inputs give the same accuracy."""
    train_x, train_y = _check_xy("train", train_x, train_y, num_classes)
    test_x, test_y = _check_xy("test", test_x, test_y, num_classes)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train features have {train_x.shape[1]} dims, test features {test_x.shape[1]}")
    n_val = int(round(val_fraction * len(train_x)))
    if len(test_x) == 0 or n_val < 1 or len(train_x) - n_val < 2:
        raise ValueError(
            f"{len(train_x)} training and {len(test_x)} test examples: too few for a probe "
            f"with a {val_fraction:.0%} validation split"
        )
    grid = sorted(float(a) for a in l2_grid)
    if not grid or grid[0] < 0:
        raise ValueError(f"l2_grid={l2_grid}: expected non-negative strengths")
    mean, std = _standardiser(train_x)  # unsupervised, so the validation rows may take part

    def scaled(x):
        return jnp.asarray((x - mean) / std, jnp.float32)

    x, y = scaled(train_x), jnp.asarray(train_y, jnp.int32)

    def accuracy(l2: float, weight: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray) -> float:
        w, b = _fit_logistic(
            x,
            y,
            jnp.asarray(weight, jnp.float32),
            jnp.float32(l2),
            num_classes=num_classes,
            iterations=iterations,
        )
        return float(np.mean(np.argmax(np.asarray(scaled(eval_x) @ w + b), axis=1) == eval_y))

    val = np.random.default_rng(seed).permutation(len(train_x))[:n_val]
    fit_weight = np.ones(len(train_x))
    fit_weight[val] = 0.0
    scores = [accuracy(l2, fit_weight, train_x[val], train_y[val]) for l2 in grid]
    best = max(i for i, s in enumerate(scores) if s == max(scores))  # ties: the stronger penalty
    return accuracy(grid[best], np.ones(len(train_x)), test_x, test_y)


# ---------------------------------------------------------------------------- the model's features


def probe_layout(task: Task, modality: str) -> int:
    """Index of the layout the examples are drawn from: the first that is only ``modality``, else
    the first that contains it (its other keys are read and ignored)."""
    if modality not in PROBED_MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {PROBED_MODALITIES}")
    having = [i for i, lt in enumerate(task.layouts) if modality in lt.layout.modalities]
    if not having:
        raise ValueError(f"no layout of the run has a {modality!r} segment (layouts: {task.names})")
    only = [i for i in having if set(task.layouts[i].layout.modalities) == {modality}]
    return (only or having)[0]


@functools.lru_cache(maxsize=16)
def _noised_tokens_fn(spec, modality: str, tau: float):
    """Jitted (x (B, ...), noise key) -> tokens (B, N, d) float32: the ``modality`` tokens of x,
    at τ > 0 noised as x_τ = (1 − τ) x + τ ε with ε ~ N(0, 1) drawn from the key. One function for
    the model's input and the pixel baseline, so both see bit-identical tokens."""
    mod = modalities.get(modality)

    @jax.jit
    def noised(x, key):
        tokens = mod.tokenize(x, spec).astype(jnp.float32)
        if tau > 0:
            tau_b = jnp.full((tokens.shape[0],), tau)
            tokens = interpolate(tokens, jax.random.normal(key, tokens.shape), tau_b)
        return tokens

    return noised


@functools.lru_cache(maxsize=16)
def _pooled_hidden_fn(modality: str, layers: tuple[int, ...], tau: float):
    """Jitted (model, tokens (B, N, d), positions (N, 3)) -> (len(layers), B, D) float32: the
    token-mean of the hidden state after each block in ``layers``, at timestep τ, with the null
    label. One call per layer of ``forward_until`` inside one jit: XLA computes their common prefix
    once."""

    @nnx.jit
    def pooled(model, tokens, positions):
        b = tokens.shape[0]
        labels = jnp.full((b,), model.num_classes, jnp.int32)  # the null class: see the module docstring
        timesteps = jnp.full((b,), tau, jnp.float32)
        return jnp.stack(
            [
                model.forward_until(
                    (tokens,), timesteps, labels, positions, layer=layer, modalities=(modality,)
                )
                .astype(jnp.float32)
                .mean(axis=1)
                for layer in layers
            ]
        )

    return pooled


def _check_layers(model, layers) -> tuple[int, ...]:
    layers = tuple(sorted({int(l) for l in layers}))
    bad = [l for l in layers if not 1 <= l <= model.depth]
    if not layers or bad:
        raise ValueError(f"layers {list(layers)}: expected block indices in [1, {model.depth}]")
    return layers


def _check_tau(tau) -> float:
    if not 0.0 <= float(tau) <= 1.0:  # also rejects NaN
        raise ValueError(f"tau={tau}: expected a value in [0, 1] (1 is pure noise)")
    return float(tau)


def _check_taus(taus) -> tuple[float, ...]:
    """Distinct τ in [0, 1], in the given order; their ``:g`` labels (the table's keys) distinct."""
    if isinstance(taus, (int, float)):
        taus = (taus,)
    if len(taus) == 0:
        raise ValueError(f"taus={taus!r}: expected at least one noise level in [0, 1]")
    taus = tuple(dict.fromkeys(_check_tau(t) for t in taus))
    labels = [f"{t:g}" for t in taus]
    if len(set(labels)) < len(labels):
        raise ValueError(f"taus {taus}: expected noise levels that differ in their first 6 digits ({labels})")
    return taus


def _feature_pass(
    models: dict, task: Task, layers, taus, *, n: int, heldout: bool, seed: int, modality: str, pixels: bool
) -> tuple[dict[float, dict[str, np.ndarray]], np.ndarray]:
    """One read of the first ``n`` training (or held-out) examples of the run's ``modality`` layout
    (its batches 0, 1, ...): ({τ: {row: (n, d) float64}}, labels (n,) int). Rows: ``"pixels"``
    (when ``pixels``): the tokens the models see, flattened, d = N·d_token; ``f"{prefix}layer_{l}"``
    for each (prefix, model) of ``models``: the mean-pooled hidden state after block l, d = D.
    Batch b is noised with ε from ``fold_in(key(seed), 2b + heldout)`` - the same ε for every τ,
    model and the pixels, so the rows of one τ differ only in what reads the tokens."""
    if n < 1:
        raise ValueError(f"n={n}: expected at least one example")
    index = probe_layout(task, modality)
    spec, key = task.specs[modality], modalities.keys_of(modality)[0]
    positions = jnp.asarray(modalities.get(modality).positions(spec))
    fns = {t: (_noised_tokens_fn(spec, modality, t), _pooled_hidden_fn(modality, layers, t)) for t in taus}
    parts: dict[float, dict[str, list]] = {t: {} for t in taus}
    labels = []
    batches = loader.BatchIterator(
        task.dataset(index, heldout=heldout),
        read_threads=task.cfg.data.read_threads,
        prefetch=task.cfg.data.prefetch,
    )
    try:
        for b in range(math.ceil(n / task.layouts[index].batch_size)):
            raw = next(batches)
            x = jnp.asarray(raw[key])
            noise_key = jax.random.fold_in(jax.random.key(seed), 2 * b + int(heldout))
            for tau, (noised, pooled) in fns.items():
                tokens = noised(x, noise_key)
                if pixels:
                    parts[tau].setdefault("pixels", []).append(np.asarray(tokens).reshape(len(tokens), -1))
                for prefix, model in models.items():
                    hidden = np.asarray(pooled(model, tokens, positions))
                    for i, layer in enumerate(layers):
                        parts[tau].setdefault(f"{prefix}layer_{layer}", []).append(hidden[i])
            labels.append(np.asarray(raw["label"]))
    finally:
        batches.close()
    feats = {
        tau: {row: np.concatenate(p)[:n].astype(np.float64) for row, p in rows.items()}
        for tau, rows in parts.items()
    }
    return feats, np.concatenate(labels)[:n]


def probe_features(
    model,
    task: Task,
    layers,
    *,
    n: int,
    heldout: bool,
    tau: float = TAU,
    seed: int = 0,
    modality: str = "image",
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """({layer: (n, D) float64 mean-pooled hidden states}, labels (n,) int) of the first ``n``
    training (or held-out) examples of the run's ``modality`` layout (its batches 0, 1, ...)."""
    tau, layers = _check_tau(tau), _check_layers(model, layers)
    feats, labels = _feature_pass(
        {"": model}, task, layers, (tau,), n=n, heldout=heldout, seed=seed, modality=modality, pixels=False
    )
    return {layer: feats[tau][f"layer_{layer}"] for layer in layers}, labels


def layer_probe(
    model,
    task: Task,
    layers,
    *,
    n_train: int = 4096,
    n_test: int = 2048,
    tau: float = TAU,
    seed: int = 0,
    modality: str = "image",
) -> dict[int, float]:
    """{layer: held-out linear-probe accuracy} of ``model``'s features after each block in ``layers``
    (1-indexed), from ``n_train`` training and ``n_test`` held-out examples of the run."""
    train_x, train_y = probe_features(
        model, task, layers, n=n_train, heldout=False, tau=tau, seed=seed, modality=modality
    )
    test_x, test_y = probe_features(
        model, task, layers, n=n_test, heldout=True, tau=tau, seed=seed, modality=modality
    )
    return {
        layer: linear_probe(
            train_x[layer], train_y, test_x[layer], test_y, task.cfg.data.num_classes, seed=seed
        )
        for layer in train_x
    }


# ---------------------------------------------------------------------------- with baselines


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error sqrt(p (1 − p) / n) of an accuracy p measured on n independent
    held-out examples: the spread of the accuracy over draws of the test set, not of the fit."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy={accuracy}: expected a fraction in [0, 1]")
    if n < 1:
        raise ValueError(f"n={n}: expected at least one test example")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


def _table_models(model, task: Task, baselines: bool) -> dict:
    """{row prefix: model}, the random network first (the table's row order)."""
    return {"random/": build_model(task.cfg, task.token_dims), "": model} if baselines else {"": model}


def probe_table_features(
    model,
    task: Task,
    layers,
    *,
    n: int,
    heldout: bool,
    taus=TAUS,
    seed: int = 0,
    modality: str = "image",
    baselines: bool = True,
) -> tuple[dict[float, dict[str, np.ndarray]], np.ndarray]:
    """({τ: {row: (n, d) float64}}, labels (n,) int): the features :func:`probe_table` probes, from
    one read of the first ``n`` training (or held-out) examples. Rows, named as the table's keys
    without ``tau_<τ>/``: ``pixels`` (n, N·d_token), ``random/layer_<l>`` and ``layer_<l>`` (n, D);
    without ``baselines`` only ``layer_<l>``."""
    taus, layers = _check_taus(taus), _check_layers(model, layers)
    return _feature_pass(
        _table_models(model, task, baselines),
        task,
        layers,
        taus,
        n=n,
        heldout=heldout,
        seed=seed,
        modality=modality,
        pixels=baselines,
    )


def probe_table(
    model,
    task: Task,
    layers,
    *,
    taus=TAUS,
    n_train: int = 4096,
    n_test: int = 2500,
    seed: int = 0,
    modality: str = "image",
    baselines: bool = True,
) -> dict[str, float]:
    """Held-out linear-probe accuracies of ``model`` at each block of ``layers`` and, with
    ``baselines``, of the two reference feature sets, at each noise level of ``taus``:

    ``tau_<τ>/layer_<l>``, ``tau_<τ>/random/layer_<l>``, ``tau_<τ>/pixels`` (τ as ``f"{τ:g}"``),
    and ``n_test``, the held-out count used (float): each accuracy's standard error is
    ``standard_error(acc, n_test)``; the default 2500 bounds it by 0.01 (at acc = 0.5).

    The training and the held-out examples are each read once for every row and τ (the same
    ε per batch throughout, see :func:`probe_features`); the random network is built here with
    the run's config and seed. The l2 search of each row is its own (see :func:`linear_probe`)."""
    taus, layers = _check_taus(taus), _check_layers(model, layers)
    models = _table_models(model, task, baselines)
    kwargs = dict(seed=seed, modality=modality, pixels=baselines)
    train, train_y = _feature_pass(models, task, layers, taus, n=n_train, heldout=False, **kwargs)
    test, test_y = _feature_pass(models, task, layers, taus, n=n_test, heldout=True, **kwargs)
    result = {
        f"tau_{tau:g}/{row}": linear_probe(
            train[tau][row], train_y, test[tau][row], test_y, task.cfg.data.num_classes, seed=seed
        )
        for tau in taus
        for row in train[tau]
    }
    result["n_test"] = float(len(test_y))
    return result


def format_table(result: dict[str, float]) -> str:
    """A :func:`probe_table` result as a Markdown table: one row per feature set (pixels, then the
    random network's blocks, then the model's), one column per τ, cells "accuracy ± standard error"."""
    n_test = int(result["n_test"])
    taus, rows = [], []
    for key in result:
        if key == "n_test":
            continue
        tau, row = key.split("/", 1)
        taus += [tau] if tau not in taus else []
        rows += [row] if row not in rows else []
    lines = [
        "| features | " + " | ".join(f"τ = {t[len('tau_') :]}" for t in taus) + " |",
        "|---" * (len(taus) + 1) + "|",
    ]
    for row in rows:
        cells = []
        for tau in taus:
            acc = result.get(f"{tau}/{row}")
            cells.append("" if acc is None else f"{acc:.3f} ± {standard_error(acc, n_test):.3f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines.append(f"\n{n_test} held-out examples; ± is the binomial standard error sqrt(p (1 − p) / n).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- of a run directory


def _load_model(run_dir, step: int | None, weights: str):
    """(model, task) of a run directory's checkpoint, with its EMA or its online parameters."""
    if weights not in WEIGHTS:
        raise ValueError(
            f"weights={weights!r}: expected one of {WEIGHTS} (the EMA or the trained parameters)"
        )
    from selfflow.run import load_run, select_weights

    _, state, graphdef, task, _ = load_run(run_dir, step)
    return nnx.merge(graphdef, select_weights(state, weights)), task


def run_layer_probe(
    run_dir, layers=None, *, step: int | None = None, weights: str = "ema", **kwargs
) -> dict[int, float]:
    """:func:`layer_probe` of a run directory's EMA (or ``weights="online"``) model (every block
    unless ``layers``)."""
    model, task = _load_model(run_dir, step, weights)
    return layer_probe(model, task, layers or range(1, model.depth + 1), **kwargs)


def run_probe_table(
    run_dir, layers=None, *, step: int | None = None, weights: str = "ema", **kwargs
) -> dict[str, float]:
    """:func:`probe_table` of a run directory's EMA (or ``weights="online"``) model (every block
    unless ``layers``)."""
    model, task = _load_model(run_dir, step, weights)
    return probe_table(model, task, layers or range(1, model.depth + 1), **kwargs)


def main(argv: list[str] | None = None) -> int:
    """``python -m selfflow.eval.probe RUN_DIR``: prints {layer: held-out probe accuracy} as JSON;
    with ``--baselines`` (or ``--taus``) a table of accuracies ± standard errors per τ."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("run_dir")
    p.add_argument("--layers", type=int, nargs="*", default=None)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--n-train", type=int, default=4096)
    p.add_argument("--n-test", type=int, default=None, help="default 2048; 2500 for the table")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--tau", type=float, default=None, help=f"one noise level (default {TAU})")
    noise.add_argument("--taus", type=float, nargs="+", default=None, help="the table's noise levels")
    p.add_argument("--modality", default="image")
    p.add_argument("--weights", choices=WEIGHTS, default="ema")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also probe the pixels and a randomly initialised network; print a table",
    )
    args = p.parse_args(argv)
    common = dict(step=args.step, weights=args.weights, n_train=args.n_train, modality=args.modality)
    if args.baselines or args.taus is not None:
        taus = args.taus or ((args.tau,) if args.tau is not None else TAUS)
        n_test = 2500 if args.n_test is None else args.n_test
        result = run_probe_table(
            args.run_dir, args.layers, taus=taus, n_test=n_test, baselines=args.baselines, **common
        )
        print(format_table(result))
        return 0
    result = run_layer_probe(
        args.run_dir,
        args.layers,
        n_test=2048 if args.n_test is None else args.n_test,
        tau=TAU if args.tau is None else args.tau,
        **common,
    )
    print(json.dumps({str(k): v for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
