"""``selfflow`` command line.

    selfflow train CONFIG.py [--run-dir DIR] [--set key=value ...]
    selfflow sample --run-dir DIR --out FILE.png [--steps N] [--cfg S] [--step K]
    selfflow bench [CONFIG.py] [--set key=value ...] [--rounds R] [--candidates] [--no-torch] [--json F]
    selfflow plot --run-dir DIR [--out FILE.png]
    selfflow verify --run-dir DIR [--step K]
    selfflow bench-data CONFIG.py [--set key=value ...] [--seconds S]
    selfflow sweep FILE.py [--out DIR] [--only NAME ...] [--dry-run]
    selfflow compare RUN_DIR... --out FILE.png [--metric KEY ...] [--x step|compute] [--smooth W]
    selfflow prepare SOURCE --out DIR [--config CONFIG.py] [--set key=value ...] [--limit N]
    selfflow compile CONFIG.py [--mesh data=2,fsdp=4] [--devices N] [--set key=value ...]
    selfflow export --run-dir DIR --out FILE [--format safetensors|official] [--weights ema|online] [--step K]
    selfflow import --official FILE.pt --config CONFIG.py --out DIR [--key ema] [--set key=value ...]
    selfflow fid-samples (--run-dir DIR | --official FILE.pt) --out FILE.npz [--num 50000] [--vae DIR] ...
    selfflow eval --run-dir DIR [--num N] [--steps S] [--cfg W] [--no-probe] [--inception FILE.pth]
                  [--dinov2 FILE.safetensors]

Exit status: 0 for a finished run, 1 for a training error (non-finite loss, bad run directory,
damaged checkpoint; ``verify``: a damaged checkpoint), 2 for a configuration or usage error,
130/143 when stopped by SIGINT/SIGTERM (checkpoint saved).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WEIGHTS_HELP = (
    "ema (default): the EMA weights, the teacher and what training samples from; online: the "
    "optimizer's weights (better early in a run, or while a long EMA still averages the initialisation)"
)
SET_HELP = (
    "override config values, e.g. --set objective.gamma=0.5 train.steps=100 (several pairs "
    "after one --set, or --set repeated)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an experiment config (resumes if RUN_DIR has checkpoints)")
    p.add_argument("config", help="experiment file defining CONFIG, e.g. experiments/quickstart.py")
    p.add_argument("--run-dir", help="output directory (default: runs/<config name>)")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="write samples of every layout of a run (EMA weights by default)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True, help="a directory: one folder of files per layout")
    p.add_argument("--steps", type=int, default=None, help="Euler steps (default: sample.steps)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (1 = none)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--weights", choices=("ema", "online"), default="ema", help=WEIGHTS_HELP)
    p.add_argument(
        "--autoencoder-weights",
        default=None,
        metavar="FILE",
        help="latent runs: the .safetensors of the autoencoder the latent manifest names (default: "
        "the file it records)",
    )
    p.add_argument(
        "--caption",
        dest="captions",
        action="append",
        default=None,
        metavar="TEXT",
        help="prompt the text-conditioned layouts: one sample per caption (repeat the option for "
        "more, or the same caption for several samples); their other cues come from the data",
    )
    p.add_argument(
        "--captions-file",
        default=None,
        metavar="FILE",
        help="captions, one per line (stripped; blank lines skipped), after any --caption",
    )
    p.add_argument(
        "--layout",
        dest="layouts",
        action="append",
        default=None,
        metavar="NAME",
        help="only this layout (repeatable; default: every layout, or every text layout with captions)",
    )

    p = sub.add_parser("bench", help="Self-Flow vs flow-matching step, MFU, bf16, sampling, PyTorch")
    p.add_argument(
        "config",
        nargs="?",
        default=None,
        help="experiment file (default: selfflow.bench.default_config, SiT-S/2 on 256 tokens, the "
        "config of experiments/bench_s2.py)",
    )
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=8, help="Euler steps per timed sampling call")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument(
        "--candidates", action="store_true", help="also time Self-Flow with each speed option switched off"
    )
    p.add_argument("--json", help="also write the full report as JSON to this file")
    p.add_argument(
        "--autoencoder",
        choices=("sd-vae", "flux1", "flux2"),
        default=None,
        help="also time this JAX autoencoder's encode and decode (images/s)",
    )
    p.add_argument(
        "--autoencoder-weights", default=None, metavar="FILE", help="its weights (default: constant ones)"
    )
    p.add_argument("--autoencoder-size", type=int, default=256, help="image side for --autoencoder")

    p = sub.add_parser("sweep", help="train a grid of runs (a SWEEP file) and tabulate their metrics")
    p.add_argument("file", help="Python file defining SWEEP = selfflow.sweep.Sweep(...)")
    p.add_argument("--out", help="output directory (default: the file's `out`, else runs/sweeps/<file stem>)")
    p.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this run (repeatable)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs and their overrides, train nothing")

    p = sub.add_parser("compare", help="curves of several runs in one PNG, plus last/best values")
    p.add_argument("runs", nargs="+", help="run directories or sweep output directories")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--metric", action="append", default=[], help="metric key (repeatable; default: losses)")
    p.add_argument(
        "--x",
        choices=("step", "compute"),
        default="step",
        help="x axis: step, or training FLOPs (equal-compute comparison)",
    )
    p.add_argument("--smooth", type=int, default=1, help="trailing mean over this many logged points")
    p.add_argument("--labels", help="comma-separated labels, one per run")

    p = sub.add_parser("bench-data", help="examples/s of each source and layout pipeline vs the train step")
    p.add_argument("config")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")

    p = sub.add_parser("prepare", help="write a source's examples as ArrayRecord shards + manifest.json")
    p.add_argument(
        "source",
        help="a source name of --config's data.sources, or KIND or KIND:PATH "
        "(e.g. fashion_mnist, image_folder:data/flowers, world)",
    )
    p.add_argument("--out", required=True, help="output directory (read back with kind 'latents')")
    p.add_argument("--config", default=None, help="experiment file giving data sizes and sources")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--shard-size", type=int, default=1024, help="examples per ArrayRecord shard")
    p.add_argument(
        "--encode",
        choices=("sd-vae", "flux1", "flux2", "wan2.1", "wan2.2"),
        default=None,
        help="store the images as this autoencoder's latents (JAX; needs --weights); wan2.1/wan2.2: the "
        "videos (T = 1 + 4k frames) as WAN latents (1 + k, H/8, W/8, 16) / (1 + k, H/16, W/16, 48)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="--encode: the autoencoder's .safetensors (diffusers or BFL/LDM; WAN: diffusers AutoencoderKLWan)",
    )
    p.add_argument(
        "--encode-batch", type=int, default=32, help="--encode: images (or clips) per autoencoder call"
    )
    p.add_argument(
        "--features",
        default=None,
        metavar="ENCODER",
        help="also store REPA's encoder features of each image (an objective.encoder value, e.g. "
        "dinov2:PATH/model.safetensors); train with objective.encoder=precomputed",
    )
    p.add_argument(
        "--features-grid",
        type=int,
        nargs=2,
        default=None,
        metavar=("GH", "GW"),
        help="token grid of the stored features (default: the image's H, W over model.patch_size)",
    )
    p.add_argument(
        "--flip-copy",
        action="store_true",
        help="--encode (image autoencoders): also store the latents (and --features) of each image "
        "mirrored left-right; training then sees each example as stored or flipped, a seeded choice",
    )
    p.add_argument(
        "--process-index",
        type=int,
        default=None,
        metavar="I",
        help="write part I of --process-count (examples [I*n/N, (I+1)*n/N)) into DIR/part-I-of-N, "
        "resumable on its own (default: jax.process_index() under jax.distributed, else 0)",
    )
    p.add_argument(
        "--process-count",
        type=int,
        default=None,
        metavar="N",
        help="parts the examples are split into, one per job (e.g. a SLURM array); kind 'latents' reads "
        "DIR once all N are written (default: jax.process_count() under jax.distributed, else 1)",
    )

    p = sub.add_parser(
        "compile", help="compile the train step for a mesh without running it; print memory per device"
    )
    p.add_argument("config")
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=SET_HELP
    )
    p.add_argument("--mesh", default="", help="axis sizes, e.g. data=2,fsdp=4 (sets mesh.<axis>)")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="simulate this many CPU devices (sets XLA_FLAGS before JAX starts)",
    )

    p = sub.add_parser("export", help="write a run's weights as safetensors or an official Self-Flow .pt")
    p.add_argument("--run-dir", required=True)
    p.add_argument(
        "--out", required=True, help="FILE.safetensors or FILE.pt (FILE.json is written beside it)"
    )
    p.add_argument(
        "--format",
        choices=("safetensors", "official"),
        default="safetensors",
        help="official: the PyTorch state dict of black-forest-labs/Self-Flow (image runs)",
    )
    p.add_argument("--weights", choices=("ema", "online"), default="ema")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument(
        "--no-learn-sigma",
        dest="learn_sigma",
        action="store_false",
        help="official: omit the unused variance channels (the released model has them)",
    )

    p = sub.add_parser("import", help="make a run (step 0) from an official Self-Flow .pt checkpoint")
    p.add_argument("--official", required=True, metavar="FILE.pt", help="loaded with weights_only=True")
    p.add_argument(
        "--config",
        required=True,
        help="experiment file describing the same model (and the data to fine-tune on)",
    )
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument(
        "--key",
        default=None,
        help="entry of a wrapped checkpoint, e.g. ema (default: 'model', 'state_dict' or the file itself)",
    )
    p.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help=SET_HELP
    )

    p = sub.add_parser(
        "fid-samples",
        help="SDE-sample images into an .npz for the ADM evaluator "
        "(the official Self-Flow protocol; resumable)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="an image run (its EMA weights, or --weights online)")
    src.add_argument("--official", metavar="FILE.pt", help="an official checkpoint (weights_only load)")
    p.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="official constructor keyword (default: the released SiT-XL/2), repeatable",
    )
    p.add_argument("--key", default=None, help="--official: entry of a wrapped checkpoint, e.g. ema")
    p.add_argument("--out", required=True, help="FILE.npz: arr_0 uint8 (num, H, W, 3), arr_1 labels")
    p.add_argument("--num", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=250, help="model evaluations (the last is the Mean step)")
    p.add_argument("--last-step-size", type=float, default=0.04)
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale (1 = none, as the paper's FID)")
    p.add_argument("--guidance-low", type=float, default=0.0, help="guidance only for τ in [low, high]")
    p.add_argument("--guidance-high", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=31)
    p.add_argument(
        "--vae",
        default=None,
        help="diffusers AutoencoderKL directory (latent models; needs "
        "diffusers), e.g. a local copy of stabilityai/sd-vae-ft-ema",
    )
    p.add_argument(
        "--autoencoder",
        choices=("sd-vae", "flux1", "flux2"),
        default=None,
        help="decode latents with this JAX autoencoder (default: the one the run's latent manifest names; "
        "required for --official latent models)",
    )
    p.add_argument(
        "--autoencoder-weights",
        default=None,
        metavar="FILE",
        help="its .safetensors (default: the file recorded in the latent manifest)",
    )
    p.add_argument("--step", type=int, default=None, help="--run-dir: checkpoint step (default: latest)")
    p.add_argument("--weights", choices=("ema", "online"), default="ema", help="--run-dir: " + WEIGHTS_HELP)

    p = sub.add_parser(
        "eval",
        help="the run's metrics (Fréchet proxies, synchrony, action error, text consistency, "
        "linear probes): DIR/eval/step_K.json and .md",
    )
    p.add_argument("--run-dir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--num", type=int, default=256, help="generated (and real) examples per layout")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: sample.steps)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: sample.cfg_scale)")
    p.add_argument("--no-probe", dest="probe", action="store_false", help="skip the per-block linear probes")
    p.add_argument("--probe-examples", type=int, nargs=2, default=(2048, 1024), metavar=("TRAIN", "TEST"))
    p.add_argument(
        "--classifier-steps",
        type=int,
        default=1000,
        help="training budget of the image-FD classifier (cached per dataset)",
    )
    p.add_argument(
        "--text-reader-steps",
        type=int,
        default=800,
        help="training budget of the text-consistency readers of world captions (cached per dataset)",
    )
    p.add_argument(
        "--autoencoder-weights",
        default=None,
        metavar="FILE.safetensors",
        help="a latent run's autoencoder weights (default: the file its latent manifest records); "
        "used where a metric needs pixels (--inception, --dinov2, video latents)",
    )
    p.add_argument(
        "--inception",
        default=None,
        metavar="FILE.pth",
        help="pytorch-fid InceptionV3 weights: also report the Inception FID of image layouts",
    )
    p.add_argument(
        "--dinov2",
        default=None,
        metavar="FILE.safetensors",
        help="model.safetensors of facebook/dinov2-large (or another size): also report FD-DINOv2 "
        "of image layouts (for fid-samples .npz files: python -m selfflow.eval.dinov2_fd)",
    )
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", choices=("ema", "online"), default="ema", help=WEIGHTS_HELP)

    p = sub.add_parser("verify", help="read back each checkpoint of a run, check its checksums (a line each)")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--step", type=int, default=None, help="only this checkpoint step")

    sub.add_parser(
        "doctor", help="Python, library versions, JAX backend and devices, default mesh; warns on misinstalls"
    )

    p = sub.add_parser("plot", help="plot a run's losses")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/loss.png)")
    return parser


def _train(args) -> int:
    from selfflow.config import load_config_file
    from selfflow.sharding import initialize_distributed
    from selfflow.train import train

    cfg = load_config_file(args.config, args.overrides)
    initialize_distributed(cfg.mesh)  # before JAX starts its backends
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    result = train(cfg, run_dir, progress=not args.no_progress)
    if result.interrupted:
        return 128 + result.stop_signal
    import jax

    samples = "no samples (multi-host)" if jax.process_count() > 1 else "samples/ (one folder per layout)"
    print(
        f"trained {result.final_step} steps; checkpoints, metrics.jsonl, loss.png and "
        f"{samples} are in {run_dir}"
    )
    return 0


def _sample(args) -> int:
    from flax import nnx

    from selfflow.layout_samples import PromptError, unknown_characters, write_run_samples
    from selfflow.run import load_run, select_weights

    if args.steps is not None and args.steps < 1:
        raise _UsageError(f"--steps={args.steps}: expected a positive integer")
    captions = _sample_captions(args)  # a bad file fails before the run is loaded
    cfg, state, graphdef, task, step = load_run(args.run_dir, args.step)
    model = nnx.merge(graphdef, select_weights(state, args.weights))
    decode = _latent_image_decoder(cfg, args.autoencoder_weights)
    try:
        paths = write_run_samples(
            cfg,
            task,
            model,
            Path(args.out),
            steps=args.steps,
            cfg_scale=args.cfg,
            image_decoder=decode,
            captions=captions,
            layouts=args.layouts,
        )
    except PromptError as e:
        raise _UsageError(f"{args.run_dir}: {e}") from None
    for caption in captions or ():
        unknown = unknown_characters(caption, task.specs["text"])
        if unknown:
            print(
                f"selfflow: warning: caption {caption!r}: the characters {unknown!r} are outside the "
                "run's byte vocabulary (each such byte reads as one shared unknown byte)",
                file=sys.stderr,
            )
    what = "EMA" if args.weights == "ema" else "online"
    prompted = "" if captions is None else f", {len(captions)} captions"
    print(
        f"wrote {len(paths)} files under {args.out} ({what} weights of step {step}{prompted}, "
        "one folder per layout)"
    )
    return 0


def _sample_captions(args) -> list[str] | None:
    """``--caption`` values, then the lines of ``--captions-file`` (stripped as caption sidecars
    are, blank lines skipped); None without either. An unreadable or captionless file is a usage
    error: sampling nothing would look like success."""
    captions = list(args.captions or [])
    if args.captions_file is None:
        return captions or None
    try:
        lines = Path(args.captions_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _UsageError(f"--captions-file {args.captions_file}: {e}") from None
    from_file = [line.strip() for line in lines if line.strip()]
    if not from_file:
        raise _UsageError(f"--captions-file {args.captions_file}: holds no captions (one per line)")
    return captions + from_file


def _latent_image_decoder(cfg, weights):
    """``(B, h, w, C)`` latents -> ``(B, H, W, 3)`` pixels in [-1, 1] with the JAX autoencoder the
    run's latent manifest names; None for pixel data."""
    from selfflow.autoencoders.latents import latent_decoder, run_autoencoder

    ae = run_autoencoder([sc.path for sc in cfg.data.sources if sc.kind == "latents"], weights=weights)
    return None if ae is None else latent_decoder(ae)


def _bench(args) -> int:
    import json

    from selfflow.bench import bench, default_config, format_report
    from selfflow.config import apply_overrides, load_config_file, validate

    if args.rounds < 1 or args.steps_per_round < 1 or args.sample_steps < 1:
        raise _UsageError("--rounds, --steps-per-round and --sample-steps must be positive")
    if args.config is None:
        cfg = validate(apply_overrides(default_config(), args.overrides))
    else:
        cfg = load_config_file(args.config, args.overrides)
    report = bench(
        cfg,
        rounds=args.rounds,
        steps_per_round=args.steps_per_round,
        torch=not args.no_torch,
        candidates=args.candidates,
        sample_steps=args.sample_steps,
    )
    if args.autoencoder:  # printed before the report, whose last line is machine-readable
        from selfflow.autoencoders import bench as ae_bench
        from selfflow.autoencoders import load_autoencoder

        ae = (
            load_autoencoder(args.autoencoder_weights, args.autoencoder)
            if args.autoencoder_weights
            else ae_bench.placeholder_autoencoder(args.autoencoder)
        )
        batch = cfg.train.batch_size or 8
        report["autoencoder"] = ae_bench.autoencoder_throughput(
            ae, batch=batch, size=args.autoencoder_size, rounds=args.rounds
        )
        print(ae_bench.format_throughput(report["autoencoder"]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(format_report(report))
    return 0


def _sweep(args) -> int:
    from selfflow.sweep import run_sweep

    run_sweep(args.file, out=args.out, only=tuple(args.only), dry_run=args.dry_run)
    return 0


def _compare(args) -> int:
    from selfflow.compare import CompareError, compare

    if args.smooth < 1:
        raise _UsageError(f"--smooth={args.smooth}: expected >= 1")
    try:
        print(
            compare(
                args.runs,
                args.out,
                metrics=tuple(args.metric),
                x=args.x,
                smooth=args.smooth,
                labels=args.labels.split(",") if args.labels else None,
            )
        )
    except CompareError as e:
        raise _UsageError(str(e)) from None
    print(f"wrote {args.out}")
    return 0


def _bench_data(args) -> int:
    from selfflow.bench_data import bench_data, format_report
    from selfflow.config import load_config_file

    if args.seconds <= 0:
        raise _UsageError(f"--seconds={args.seconds}: expected > 0")
    cfg = load_config_file(args.config, args.overrides)
    print(format_report(bench_data(cfg, seconds=args.seconds)))
    return 0


def _prepare(args) -> int:
    import dataclasses

    import modalities
    from data_pipelines import latents, sources
    from selfflow.config import Config, ConfigError, SourceConfig, apply_overrides, load_config_file, validate

    cfg = (
        load_config_file(args.config, args.overrides)
        if args.config
        else validate(apply_overrides(Config(), args.overrides))
    )
    named = {sc.name: sc for sc in cfg.data.sources}
    if args.source in named:
        sc = named[args.source]
    else:
        kind, _, path = args.source.partition(":")
        sc = SourceConfig(name=kind, kind=kind, path=path)
        validate(
            dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, sources=(sc,)), layouts=(), modalities=()
            )
        )
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit={args.limit}: expected a positive integer")
    index, count = _prepare_part(args)
    source = sources.build(sc, cfg.data, cfg.seed)
    total = len(source) if args.limit is None else min(args.limit, len(source))
    if count > total:
        raise _UsageError(
            f"--process-count {count} exceeds the {total} examples to write (a part would be empty)"
        )
    encoded, autoencoder = _autoencoder_source(args, source)
    modality = "+".join(m for m in modalities.MODALITIES if sources.provides(source, m))
    features = _feature_writer(args, cfg, encoded or source)  # the token grid of the latents, if encoded
    if encoded is not None:
        encoded.pre, source, features = features, encoded, None  # features from the pixels
    manifest = latents.prepare(
        source,
        args.out,
        name=sc.name,
        modality=modality,
        shard_size=args.shard_size,
        encode=features,
        limit=args.limit,
        on_bad_sample=cfg.data.on_bad_sample,
        progress=True,
        autoencoder=autoencoder,
        resume=True,  # a rerun after an interruption starts after the last complete shard
        part=(index, count),
        flipped=args.flip_copy,
    )
    where = args.out if count == 1 else Path(args.out) / latents.part_dir(index, count)
    done = "" if count == 1 else f" (part {index} of {count}; the source is complete once all {count} are)"
    print(
        f"wrote {manifest['count']} examples of {sc.name!r} ({modality}) to {where}{done}; "
        f"train on them with SourceConfig(name=..., kind='latents', path={str(args.out)!r})"
    )
    return 0


def _prepare_part(args) -> tuple[int, int]:
    """(part index, part count) of ``prepare``: the flags, else this process among
    jax.distributed's processes, else (0, 1)."""
    if (args.process_index is None) != (args.process_count is None):
        raise _UsageError("--process-index I and --process-count N go together")
    if args.process_count is not None:
        index, count = args.process_index, args.process_count
        if count < 1 or not 0 <= index < count:
            raise _UsageError(f"--process-index {index} --process-count {count}: expected 0 <= I < N")
        return index, count
    jax = sys.modules.get("jax")  # jax.distributed can only be initialised if jax is imported
    if jax is not None and jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    return 0, 1


def _autoencoder_source(args, source):
    """(the source's images as latents, the manifest's autoencoder record) for ``--encode``, else
    (None, None)."""
    if not (args.encode or args.weights):
        if args.flip_copy:
            raise _UsageError("--flip-copy needs --encode NAME --weights FILE (it stores flipped latents)")
        return None, None
    if not (args.encode and args.weights):
        raise _UsageError("--encode NAME and --weights FILE go together (the autoencoder and its weights)")
    from selfflow.autoencoders import latents as ae_latents
    from selfflow.autoencoders.wan import WAN_PRESETS

    if args.flip_copy and args.encode in WAN_PRESETS:
        raise _UsageError(
            f"--flip-copy with --encode {args.encode}: flipped copies are for images; a mirrored video "
            "would disagree with its actions and first frame"
        )
    ae = ae_latents.load_named(args.weights, args.encode)  # WAN names encode the videos
    encoded = ae_latents.EncodedSource(source, ae, batch_size=args.encode_batch, flip_copy=args.flip_copy)
    return encoded, ae_latents.manifest_entry(ae, args.weights)


def _feature_writer(args, cfg, source):
    """prepare's ``encode`` for ``--features`` (None without it)."""
    if args.features is None:
        if args.features_grid is not None:
            raise _UsageError("--features-grid needs --features ENCODER")
        return None
    from selfflow.encoders.precomputed import FeatureWriter, token_grid

    if "image" not in source.schema:
        raise _UsageError(f"--features: source {args.source!r} yields no images ({', '.join(source.schema)})")
    grid = args.features_grid or token_grid(source.schema["image"].shape, cfg.model.resolved("patch_size"))
    return FeatureWriter(args.features, tuple(grid))


def _compile(args) -> int:
    from selfflow.compile_check import compile_report, format_report
    from selfflow.config import load_config_file

    mesh = [f"mesh.{item.strip()}" for item in args.mesh.split(",") if item.strip()]
    cfg = load_config_file(args.config, [*args.overrides, *mesh])
    print(format_report(compile_report(cfg)))
    return 0


def _export(args) -> int:
    from selfflow.export import export_official, export_safetensors

    if args.format == "official":
        path, meta = export_official(
            args.run_dir, args.out, weights=args.weights, step=args.step, learn_sigma=args.learn_sigma
        )
    else:
        path, meta = export_safetensors(args.run_dir, args.out, weights=args.weights, step=args.step)
    print(f"wrote {path} ({args.weights} weights, {args.format}) and {meta}")
    return 0


def _import(args) -> int:
    from selfflow.config import load_config_file
    from selfflow.export import import_official

    cfg = load_config_file(args.config, args.overrides)
    out = import_official(args.official, cfg, args.out, key=args.key)
    print(
        f"wrote {out} (step 0, weights of {args.official}); fine-tune with "
        f"`selfflow train {args.config} --run-dir {out}`, sample with `selfflow sample --run-dir {out}`"
    )
    return 0


def _fid_samples(args) -> int:
    from functools import partial

    from tqdm import tqdm

    from modalities import image as image_mod
    from selfflow import fid_samples
    from selfflow.sample import ModelVelocity

    if args.run_dir:
        from flax import nnx

        from selfflow.run import load_run, select_weights

        cfg, state, graphdef, task, _ = load_run(args.run_dir, args.step)
        if set(task.token_dims) != {"image"}:
            raise _UsageError(
                f"{args.run_dir}: fid-samples needs an image-only run; it has {sorted(task.token_dims)}"
            )
        model, positions, num_classes = (
            nnx.merge(graphdef, select_weights(state, args.weights)),
            task.layouts[0].positions,
            cfg.data.num_classes,
        )
        spec = task.specs["image"]
    else:
        from selfflow.export import load_official
        from selfflow.official import image_spec

        official = load_official(args.official, args.key, **_arch_overrides(args.arch))
        model, positions = official.model, official.positions
        num_classes = official.architecture["num_classes"] - 1
        spec = image_spec(official.architecture)
    detokenize = partial(image_mod.detokenize, spec=spec)
    latent_shape = (spec.height, spec.width, spec.channels)
    ae = None
    if not args.vae:
        from selfflow.autoencoders.latents import image_decoder, run_autoencoder

        dirs = [sc.path for sc in cfg.data.sources if sc.kind == "latents"] if args.run_dir else []
        ae = run_autoencoder(dirs, name=args.autoencoder, weights=args.autoencoder_weights)
    if args.vae:  # diffusers (PyTorch), kept as a cross-check of the JAX autoencoders
        decode = fid_samples.sd_vae_decoder(args.vae, detokenize, latent_shape=latent_shape)
    elif ae is not None:
        decode = image_decoder(ae, detokenize, latent_shape=latent_shape)
    elif spec.channels in (1, 3):
        decode = fid_samples.pixel_decoder(detokenize)
    else:
        raise _UsageError(
            f"the model makes {spec.channels}-channel latents: pass --autoencoder NAME "
            "--autoencoder-weights FILE (or --vae DIR, a diffusers AutoencoderKL) to decode them"
        )
    bar = tqdm(total=args.num, desc="fid-samples", file=sys.stderr, dynamic_ncols=True)
    try:
        out = fid_samples.generate_npz(
            ModelVelocity(model, positions),
            out=args.out,
            num=args.num,
            batch_size=args.batch_size,
            token_shape=(spec.num_tokens, spec.token_dim),
            num_classes=num_classes,
            null_class=num_classes,
            decode=decode,
            seed=args.seed,
            steps=args.steps,
            last_step_size=args.last_step_size,
            cfg_scale=args.cfg,
            guidance_low=args.guidance_low,
            guidance_high=args.guidance_high,
            progress=lambda done, total: bar.update(done - bar.n),
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None
    finally:
        bar.close()
    print(f"wrote {out} ({args.num} samples, {args.steps} SDE steps, cfg {args.cfg})")
    return 0


def _eval(args) -> int:
    from selfflow.eval.evaluate import EvalSettings, evaluate_run

    try:
        settings = EvalSettings(
            num=args.num,
            steps=args.steps,
            cfg_scale=args.cfg,
            seed=args.seed,
            probe=args.probe,
            probe_examples=tuple(args.probe_examples),
            classifier_steps=args.classifier_steps,
            text_reader_steps=args.text_reader_steps,
            autoencoder_weights=args.autoencoder_weights,
            inception=args.inception,
            dinov2=args.dinov2,
        )
    except ValueError as e:
        raise _UsageError(str(e)) from None
    _, json_path, md_path = evaluate_run(
        args.run_dir,
        settings,
        step=args.step,
        weights=args.weights,
        out_dir=args.out,
        progress=lambda what: print(f"eval: {what}", file=sys.stderr),
    )
    print(md_path.read_text(), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


def _arch_overrides(items: list[str]) -> dict:
    """``["depth=4", "learn_sigma=false"]`` -> official constructor keywords, typed as the defaults."""
    from selfflow.official import RELEASED_XL2

    arch = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in RELEASED_XL2:
            raise _UsageError(f"--arch {item!r}: expected KEY=VALUE with KEY one of {list(RELEASED_XL2)}")
        kind = type(RELEASED_XL2[key])
        try:
            arch[key] = {"true": True, "false": False}[text.lower()] if kind is bool else kind(text)
        except (KeyError, ValueError):
            raise _UsageError(f"--arch {item!r}: expected {kind.__name__} for {key}") from None
    return arch


def _doctor(args) -> int:
    from selfflow import doctor

    return doctor.main()


def _plot(args) -> int:
    from selfflow.metrics_writer import plot_losses

    run_dir = Path(args.run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise _UsageError(f"{metrics} does not exist: --run-dir must be a training run directory")
    print(f"wrote {plot_losses(metrics, args.out or run_dir / 'loss.png')}")
    return 0


def _verify(args) -> int:
    from selfflow.checkpoint import verify_run

    damaged = 0
    for line, ok in verify_run(args.run_dir, args.step):
        print(line)
        damaged += not ok
    return 1 if damaged else 0


class _UsageError(ValueError):
    pass


def _simulate_cpu_devices(n: int) -> None:
    """N fake CPU devices; only possible before JAX has created its backends."""
    import os
    import sys as _sys

    if n < 1:
        raise SystemExit(f"selfflow: error: --devices={n}: expected a positive integer")
    flags = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
    if "jax" in _sys.modules:
        import jax

        if jax.device_count() != n and jax.devices()[0].platform == "cpu":
            raise SystemExit(
                f"selfflow: error: --devices={n}: JAX already started with {jax.device_count()} devices"
            )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "devices", None):
        _simulate_cpu_devices(args.devices)
    from data_pipelines.base import BadSampleError, SourceError
    from selfflow.errors import ConfigError, ParamsError, TrainingError
    from selfflow.official import OfficialFormatError

    try:
        return {
            "train": _train,
            "sample": _sample,
            "bench": _bench,
            "plot": _plot,
            "verify": _verify,
            "doctor": _doctor,
            "bench-data": _bench_data,
            "prepare": _prepare,
            "compile": _compile,
            "export": _export,
            "import": _import,
            "fid-samples": _fid_samples,
            "eval": _eval,
            "sweep": _sweep,
            "compare": _compare,
        }[args.command](args)
    except (ConfigError, _UsageError) as e:
        print(f"selfflow: error: {e}", file=sys.stderr)
        return 2
    except (
        TrainingError,
        FileNotFoundError,
        SourceError,
        BadSampleError,
        ParamsError,
        OfficialFormatError,
    ) as e:
        print(f"selfflow: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
