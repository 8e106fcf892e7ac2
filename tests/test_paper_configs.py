"""paper_repro: every config loads and validates, its model has the size the paper (or its docstring)
states, and paper_repro/README.md names exactly the configs and sweeps that exist, with the compute
figures paper_repro/compute.py produces. Fast: no data is read and no large model is materialised."""

import re
from pathlib import Path

import jax
import pytest
from flax import nnx

from selfflow.config import ConfigError, exec_python_file, load_config_file
from selfflow.model import build_model, count_params
from selfflow.sweep import configs as sweep_configs
from selfflow.sweep import expand, load_sweep

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "paper_repro"
CONFIGS = sorted((REPRO / "configs").glob("*.py"))
SWEEPS = sorted((REPRO / "sweeps").glob("*.py"))
CPU_SWEEPS = [REPRO / "cpu/fashion_objectives.py", REPRO / "cpu/ablations.py"]
README = REPRO / "README.md"

compute = exec_python_file(REPRO / "compute.py", "paper_repro_compute")

# Parameter counts the paper states for the model a config reproduces (without the projector,
# which inference drops): SiT-XL/2 of the ImageNet checkpoint, ~675M (HF model card).
PAPER_PARAMS = {"imagenet256_xl2": 675e6, "imagenet512_xl2": 675e6}
# The paper's shared multimodal backbone: width 1152, 16 heads, 7 + 14 = 21 blocks, MLP ratio 4.
MULTIMODAL_TRUNK = (21, 1152, 16, 4.0)
# The README rows of the text-conditioned experiments and the config (or sweep) each names.
TEXT_ROWS = {
    9: "text_to_image_625m",
    10: "text_to_image_625m",
    11: "scaling_text_to_image",
    12: "text_to_video_625m",
    13: "text_to_audio_625m",
    18: "text_to_video_audio",
    19: "robotics_rt1_text_video_action",
}
TEXT_DIM = 4096  # the text encoder's width the text configs assume (text_to_image_625m.py)


def _name(path: Path) -> str:
    return path.stem


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_there_are_configs_and_sweeps():
    assert len(CONFIGS) >= 5 and len(SWEEPS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_config_loads_and_validates(path):
    cfg = load_config_file(path)  # load_config_file runs validate
    shapes = exec_python_file(path, "config").DATA_SHAPES
    assert compute.token_dims(cfg, shapes), "DATA_SHAPES must give every modality of the layouts"


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_docstring_names_its_own_command(path):
    doc = exec_python_file(path, "config").__doc__ or ""
    command = f".venv/bin/selfflow train {_rel(path)} --run-dir runs/{path.stem}"
    assert command in doc, f"{path.name}: the docstring lacks `{command}`"


@pytest.mark.parametrize("path", [*CONFIGS, *SWEEPS], ids=_name)
def test_assumptions_give_a_reason(path):
    lines = [line for line in path.read_text().splitlines() if "# assumption:" in line]
    assert lines, f"{path.name}: no `# assumption: ... because ...` comment"
    for line in lines:
        assert "because" in line.split("# assumption:", 1)[1], f"{path.name}: no reason given: {line.strip()}"


@pytest.mark.parametrize("path", [*SWEEPS, *CPU_SWEEPS], ids=_name)
def test_sweep_runs_validate(path):
    sweep, base = load_sweep(path)
    cfgs = sweep_configs(sweep, base)  # every run's overrides applied and validated
    assert len(cfgs) == len(expand(sweep)) >= 2
    doc = exec_python_file(path, "sweep").__doc__ or ""
    assert f".venv/bin/selfflow sweep {_rel(path)}" in doc


def test_bad_override_in_a_config_is_rejected():
    """The validation these tests rely on does reject a wrong value (it is not vacuous)."""
    with pytest.raises(ConfigError):
        load_config_file(REPRO / "configs" / "imagenet256_xl2.py", ["objective.teacher_layer=40"])


# ---------------------------------------------------------------------------- model sizes


def _tiny_multimodal_cfg():
    cfg = load_config_file(
        REPRO / "configs" / "robotics_rt1_video_action.py",
        [
            "model.depth=3",
            "model.hidden_size=48",
            "model.num_heads=4",
            "model.mlp_ratio=3.0",
            "data.num_classes=7",
            "objective.student_layer=1",
            "objective.teacher_layer=2",
        ],
    )
    return cfg, {"image": 12, "video": 24, "action": 5}


def _tiny_text_cfg(pooled: bool):
    """The text-to-image backbone (double-stream blocks, pooled text) at a tiny size."""
    cfg = load_config_file(
        REPRO / "configs" / "text_to_image_625m.py",
        [
            "model.depth=3",
            "model.hidden_size=48",
            "model.num_heads=4",
            "model.double_stream_blocks=2",
            f"model.text_pooled={str(pooled).lower()}",
            "objective.student_layer=1",
            "objective.teacher_layer=2",
        ],
    )
    return cfg, {"image": 16, "text": 9}


def test_analytic_count_matches_a_real_model():
    image = load_config_file(
        REPRO / "configs" / "imagenet256_xl2.py",
        [
            "model.depth=2",
            "model.hidden_size=32",
            "model.num_heads=2",
            "objective.student_layer=1",
            "objective.teacher_layer=2",
        ],
    )
    cases = ((image, {"image": 16}), _tiny_multimodal_cfg(), _tiny_text_cfg(True), _tiny_text_cfg(False))
    for cfg, dims in cases:
        assert compute.count_params(cfg, dims) == count_params(build_model(cfg, dims))


def test_analytic_count_matches_the_abstract_xl_model():
    """The full-size SiT-XL/2 config, shapes only (nnx.eval_shape: nothing is allocated)."""
    cfg = load_config_file(REPRO / "configs" / "imagenet256_xl2.py")
    abstract = nnx.eval_shape(lambda: build_model(cfg, {"image": 16}))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert isinstance(leaves[0], jax.ShapeDtypeStruct)  # really abstract
    assert compute.count_params(cfg, {"image": 16}) == sum(x.size for x in leaves) == 680_128_144


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_sizes_match_the_paper(name):
    cfg, shapes = compute.load(REPRO / "configs" / f"{name}.py")
    params = compute.count_params(cfg, compute.token_dims(cfg, shapes), projector=False)
    assert abs(params - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.005, params


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if not compute.class_conditional_images(compute.load(p)[0])], ids=_name
)
def test_multimodal_trunk_is_the_papers(path):
    cfg, _ = compute.load(path)
    m = cfg.model
    assert (cfg.depth, m.resolved("hidden_size"), m.resolved("num_heads"), m.mlp_ratio) == MULTIMODAL_TRUNK
    assert m.resolved("hidden_size") // m.resolved("num_heads") == 72  # 3D RoPE, 24 channels per axis


@pytest.mark.parametrize("path", CONFIGS, ids=_name)
def test_docstring_parameter_count_is_current(path):
    """'Parameters (this config): 674.8M + 5.3M projector' in each docstring equals the count."""
    cfg, shapes = compute.load(path)
    doc = exec_python_file(path, "config").__doc__
    found = re.search(r"Parameters \(this config\): ([0-9.]+)M \+ ([0-9.]+)M projector", doc)
    assert found, f"{path.name}: no 'Parameters (this config): ...' line"
    trunk = compute.count_params(cfg, compute.token_dims(cfg, shapes), projector=False)
    assert found.groups() == (f"{trunk / 1e6:.1f}", f"{compute.projector_params(cfg) / 1e6:.1f}")


def test_token_geometry_matches_the_tasks_own():
    """compute.specs (used for the counts and FLOPs) derives the same tokens as selfflow.tasks.Task
    from the same data shapes: checked on a procedural run with image, video, audio and action."""
    from data_pipelines.sources import clip_frames
    from selfflow.tasks import Task

    cfg = load_config_file(ROOT / "experiments" / "world_paired.py", ["data.num_examples=300"])
    task = Task(cfg)
    world = task.sources["world"].schema
    shapes = {k: world[k].shape for k in ("video", "actions", "proprio", "audio")}
    shapes["image"] = world["video"].shape[1:]
    specs = compute.specs(cfg, shapes)
    assert compute.token_dims(cfg, shapes) == task.token_dims
    assert {m: s.num_tokens for m, s in specs.items()} == {m: s.num_tokens for m, s in task.specs.items()}
    assert world["video"].shape[0] == clip_frames(cfg.data)


@pytest.mark.parametrize("name", sorted(set(TEXT_ROWS.values()) - {"scaling_text_to_image"}))
def test_text_configs_condition_every_layout_on_encoder_features(name):
    """The text rows' configs: every layout starts from the caption (encoder features of DATA_SHAPES'
    width, data.text_tokens rows), the FLUX-style split of the paper (7 double-stream blocks of 21)
    with the pooled text vector, one class, and labels dropped with the captions."""
    cfg, shapes = compute.load(REPRO / "configs" / f"{name}.py")
    assert all(lc.segments[0] == "text:condition" for lc in cfg.layouts)
    rows = cfg.data.text_tokens
    assert shapes["text"] == (rows, TEXT_DIM) and shapes["text_mask"] == (rows,)
    assert (cfg.model.double_stream_blocks, cfg.depth, cfg.model.text_pooled) == (7, 21, True)
    assert cfg.data.num_classes == 1 and cfg.objective.label_dropout == cfg.objective.text_dropout > 0
    assert compute.specs(cfg, shapes)["text"].kind == "features"


def test_text_scaling_sweep_is_the_papers_depths():
    """Row 11: Self-Flow and REPA at depth 8 / 14 / 21 / 28, 1M steps, layers by 0.3·D / 0.7·D; the
    depth-21 Self-Flow run is text_to_image_625m.py's model with its layers."""
    sweep, base = load_sweep(REPRO / "sweeps" / "scaling_text_to_image.py")
    cfgs = sweep_configs(sweep, base)
    assert sorted((c.objective.kind, c.depth) for c in cfgs.values()) == sorted(
        (kind, d) for kind in ("repa", "self_flow") for d in (8, 14, 21, 28)
    )
    for cfg in cfgs.values():
        assert cfg.train.steps == 1_000_000 and cfg.student_layer == round(0.3 * cfg.depth)
        assert cfg.model.double_stream_blocks == round(cfg.depth / 3)
    reference, _ = compute.load(base)
    run = cfgs["self_flow_depth21"]
    assert (run.model, run.student_layer, run.teacher_layer) == (
        reference.model,
        reference.student_layer,
        reference.teacher_layer,
    )


def test_robotics_shapes_are_what_the_trajectory_source_yields():
    from data_pipelines.sources import clip_frames

    cfg, shapes = compute.load(REPRO / "configs" / "robotics_rt1_video_action.py")
    s, t = cfg.data.image_size, clip_frames(cfg.data)
    assert shapes["video"] == (t, s, s, 3) and shapes["image"] == (s, s, 3)
    assert shapes["actions"] == (t, 7) and shapes["proprio"][0] == t  # six 7-D actions (paper)


# ---------------------------------------------------------------------------- README


def _readme_sections() -> dict[str, str]:
    text = README.read_text()
    parts = re.split(r"^## ", text, flags=re.M)
    return {p.split("\n", 1)[0].strip(): p for p in parts[1:]}


def _table_rows() -> list[str]:
    body = _readme_sections()["Experiments"].split("\n### ")[0]
    return [line for line in body.splitlines() if re.match(r"\| \d+ \|", line)]


def test_readme_table_and_files_agree():
    named = set()
    for row in _table_rows():
        named |= set(re.findall(r"paper_repro/(?:configs|sweeps)/[A-Za-z0-9_.]+?\.py", row))
    files = {_rel(p) for p in [*CONFIGS, *SWEEPS]}
    assert named - files == set(), "the README table names files that do not exist"
    assert files - named == set(), "files missing from the README table"
    everywhere = set(re.findall(r"paper_repro/(?:configs|sweeps)/[A-Za-z0-9_.]+?\.py", README.read_text()))
    assert everywhere <= files


def test_readme_rows_have_seven_cells_and_an_honest_status():
    rows = _table_rows()
    assert len(rows) >= 20
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
        assert len(cells) == 7, row
        assert cells[6].startswith(("config only", "not runnable", "runnable elsewhere")), cells[6]
    text = "\n".join(rows)
    for table in ("Table 1", "Table 2", "Table 3", "Table 4", "Fig. 1a", "App. E", "App. H"):
        assert table in text
    # every text-conditioned row (9-13, 18, 19) has its config now (issue 21, item 5)
    assert "needs a text-conditioned config" not in text
    for number, name in TEXT_ROWS.items():
        (row,) = [r for r in rows if r.startswith(f"| {number} |")]
        assert name in row, (number, name)


def test_readme_compute_figures_are_the_scripts():
    assert compute.table() in README.read_text(), (
        "rerun `.venv/bin/python paper_repro/compute.py` into the README"
    )
    days = compute.days_by_file()
    checked = 0
    for row in _table_rows():
        figures = re.findall(r"[≈≤] ?([0-9.]+)(?:–([0-9.]+))? H100-days", row)
        files = set(re.findall(r"paper_repro/(?:configs|sweeps)/[A-Za-z0-9_.]+?\.py", row))
        allowed = set().union(*(days[f] for f in files)) if files else set()
        for figure in figures:
            for value in filter(None, figure):
                assert value in allowed, (
                    f"{value} H100-days is not a compute.py figure of {files}: {row[:80]}"
                )
                checked += 1
    assert checked >= 10


def test_readme_cpu_results_are_the_committed_runs():
    """Each measured figure of reproduction 1 is the last value its results.json holds."""
    import json

    section = _readme_sections()["CPU-scale reproductions (measured here)"]
    rows = json.loads((README.parent / "results/fashion_objectives/results.json").read_text())["rows"]
    for row in rows:
        fd = row["metrics"]["eval/image/image_fd"]
        line = next(l for l in section.splitlines() if l.startswith(f"| {row['name']}"))
        assert f"{fd:.1f} ({row['step']}" in line, (row["name"], fd, line)
    assert "Assumptions" in _readme_sections()


def test_cpu_ablations_change_one_thing_of_the_reference():
    """Reproduction 2: every run differs from the reference Self-Flow run in exactly the objective
    field it ablates (and nothing else), and the reference is reproduction 1's self_flow run."""
    import dataclasses

    sweep, base = load_sweep(REPRO / "cpu/ablations.py")
    cfgs = sweep_configs(sweep, base)
    ref = cfgs["reference"]
    ablated = {
        "mask_0": "mask_ratio",
        "mask_0.1": "mask_ratio",
        "mask_0.5": "mask_ratio",
        "gamma_0": "kind",
        "gamma_0.4": "gamma",
        "time_gap_0.2": "time_gap",
        "l1": "rep_distance",
        "student_layer_1": "student_layer",
        "teacher_layer_6": "teacher_layer",
    }
    assert set(cfgs) == {"reference", "reference_seed1", "reference_seed2", *ablated}
    assert [cfgs[f"reference_seed{i}"].seed for i in (1, 2)] == [1, 2]
    assert all(dataclasses.replace(cfgs[f"reference_seed{i}"], seed=0) == ref for i in (1, 2))

    def objective_view(cfg):  # resolved configs hold the mask ratio in the image modality's entry
        (image,) = cfg.modalities
        return {**dataclasses.asdict(cfg.objective), "mask_ratio": image.mask_ratio}

    for name, field in ablated.items():
        cfg = cfgs[name]
        assert dataclasses.replace(cfg, objective=ref.objective, modalities=ref.modalities) == ref, name
        view, ref_view = objective_view(cfg), objective_view(ref)
        diff = {k for k in ref_view if view[k] != ref_view[k]}
        assert diff == {field}, (name, diff)
    o = ref.objective  # the reference the docstring states
    assert (
        o.kind,
        ref.modalities[0].mask_ratio,
        o.gamma,
        ref.student_layer,
        ref.teacher_layer,
        o.rep_distance,
        o.time_gap,
    ) == ("self_flow", 0.25, 0.8, 2, 4, "cosine", 0.0)
    assert ref.model.resolved("depth") == 6 and cfgs["teacher_layer_6"].teacher_layer == 6
    s1, base1 = load_sweep(REPRO / "cpu/fashion_objectives.py")
    self_flow = sweep_configs(s1, base1)["self_flow"]
    same_ema = dataclasses.replace(self_flow.objective, ema_decay=ref.objective.ema_decay)
    assert dataclasses.replace(self_flow, train=ref.train, objective=same_ema) == ref
    assert ref.train.steps <= self_flow.train.steps


def test_cpu_cross_modal_arms_differ_only_in_what_they_compare():
    """Reproduction 3: video-only vs audio-video differ only in the layout's segments (same name, so
    their curves share keys); Self-Flow vs flow matching only in the objective's kind."""
    import dataclasses

    cm = exec_python_file(REPRO / "cpu/cross_modal.py", "cross_modal")
    world = cm.world_configs()
    v, av = world["video_only"], world["audio_video"]
    assert [l.segments for l in v.layouts] == [("video",)] and [l.segments for l in av.layouts] == [
        ("video", "audio")
    ]
    assert v.layouts[0].name == av.layouts[0].name
    assert dataclasses.replace(av, layouts=v.layouts, modalities=v.modalities) == v
    assert v.objective.kind == "self_flow"
    pusht = cm.pusht_configs()
    sf, fm = pusht["self_flow"], pusht["flow_matching"]
    assert (sf.objective.kind, fm.objective.kind) == ("self_flow", "flow_matching")
    assert dataclasses.replace(fm, objective=sf.objective) == sf
    assert ".venv/bin/python paper_repro/cpu/cross_modal.py" in cm.__doc__


def test_readme_ablation_results_are_the_committed_runs():
    """Reproduction 2: each README row's FD, probe and val/loss are its results.json values, and the
    stated seed spread is the reference seeds'."""
    import json
    import statistics

    section = _readme_sections()["CPU-scale reproductions (measured here)"].split("\n### 2. ")[1]
    rows = json.loads((README.parent / "results/ablations/results.json").read_text())["rows"]
    assert len(rows) == 12
    for row in rows:
        m = row["metrics"]
        line = next(l for l in section.splitlines() if l.startswith(f"| {row['name']} |"))
        probe = max(m["eval/probe/layer_2"], m["eval/probe/layer_4"])
        for figure in (f"{m['eval/image/image_fd']:.1f}", f"{probe:.3f}", f"{m['val/loss']:.3f}"):
            assert f"| {figure} |" in line, (row["name"], figure, line)
        assert row["step"] == 250
    seeds = [r["metrics"]["eval/image/image_fd"] for r in rows if r["group"].startswith("reference")]
    assert f"mean {statistics.mean(seeds):.1f}, standard deviation {statistics.stdev(seeds):.1f}" in section


def test_readme_cross_modal_results_are_the_committed_runs():
    """Reproduction 3: the README's world and PushT figures are the committed results.json's."""
    import json

    section = _readme_sections()["CPU-scale reproductions (measured here)"].split("\n### 3. ")[1]
    results = json.loads((README.parent / "results/cross_modal/results.json").read_text())
    lines = section.splitlines()

    def row(name):
        return next(l for l in lines if l.startswith(f"| {name} |"))

    for name, r in results["world"].items():
        for key in ("world/video_frame_fd", "world/video_motion_fd", "val/video"):
            assert f"| {r[key]:.3g} |" in row(name), (name, key)
    assert f"| {results['world']['audio_video']['world/av_synchrony']:.3g} |" in row("audio_video")
    for name, r in results["pusht"].items():
        sim = r["simulator"]["model"]
        for figure in (
            f"{r['policy/action_l2']:.1f}",
            f"{r['val/policy/action']:.3f}",
            f"{sim['success_rate']:.2f}",
            f"{sim['mean_max_coverage']:.3f}",
        ):
            assert f"| {figure} |" in row(name), (name, figure)
    expert = results["pusht"]["self_flow"]["simulator"]["expert"]
    assert f"| {expert['mean_max_coverage']:.3f} |" in row("scripted expert (same starts)")


def test_readme_cpu_tables_are_the_scripts_output():
    """The README's reproduction 2 and 3 tables are what their scripts print from the committed results."""
    import json

    text = README.read_text()
    abl = exec_python_file(REPRO / "cpu/ablations.py", "ablations")
    rows = json.loads((REPRO / "results/ablations/results.json").read_text())["rows"]
    assert abl.readme_table(rows) in text, (
        "rerun `.venv/bin/python paper_repro/cpu/ablations.py` into the README"
    )
    cm = exec_python_file(REPRO / "cpu/cross_modal.py", "cross_modal")
    results = json.loads((REPRO / "results/cross_modal/results.json").read_text())
    assert cm.world_table(results["world"]) in text and cm.pusht_table(results["pusht"]) in text
    assert (REPRO / "results/cross_modal/results.md").read_text() == cm.markdown(results)


def test_warm_start_arms_differ_only_in_the_objective():
    """Reproduction 4's protocol: every arm branches from the shared run's state with its
    optimizer, and arms of one seed differ only in the objective's kind and γ."""
    from selfflow.config import resolved_dict
    from selfflow.run import _flatten

    ws = exec_python_file(REPRO / "cpu/warm_start.py", "warm_start")
    shared = _flatten(resolved_dict(ws.shared_config()))
    assert shared["objective.kind"] == "flow_matching" and shared["train.steps"] == ws.SHARED_STEPS
    objective_keys = {"objective.kind", "objective.gamma"}
    for seed in ws.SEEDS:
        arms = {arm: _flatten(resolved_dict(ws.arm_config(arm, seed))) for arm in ws.ARMS}
        reference = arms["flow_matching"]
        for arm, flat in arms.items():
            assert flat["train.init_from"] == str(ws.STUDY / "shared") and flat["train.init_optimizer"]
            assert flat["train.steps"] == ws.SHARED_STEPS + ws.BRANCH_STEPS and flat["seed"] == seed
            assert {k for k in flat if flat[k] != reference[k]} <= objective_keys, arm
            branch_only = {"train.init_from", "train.init_optimizer", "train.steps", "seed"}
            assert {k for k in flat if flat[k] != shared[k]} <= objective_keys | branch_only, arm
    assert [arms[a]["objective.gamma"] for a in ("self_flow_0.8", "self_flow_4")] == [0.8, 4.0]


def test_readme_warm_start_results_are_the_committed_runs():
    """Reproduction 4: the README's table is what warm_start.py prints from the committed results,
    and results.md and the curves come from the same run."""
    import json

    ws = exec_python_file(REPRO / "cpu/warm_start.py", "warm_start")
    results = json.loads((REPRO / "results/warm_start/results.json").read_text())
    table = ws.markdown(results)
    assert table in README.read_text(), (
        "rerun `.venv/bin/python paper_repro/cpu/warm_start.py --report` into the README"
    )
    assert (REPRO / "results/warm_start/results.md").read_text() == table
    assert set(results["end"]) == {ws.arm_name(a, s) for a in ws.ARMS for s in ws.SEEDS}
    curves = json.loads((REPRO / "results/warm_start/curves.json").read_text())
    for arm in ws.ARMS:  # the last logged step of every arm is its end
        assert curves[ws.arm_name(arm, 0)]["fm_loss"][-1][0] == ws.SHARED_STEPS + ws.BRANCH_STEPS
    assert curves["shared"]["fm_loss"][-1][0] == ws.SHARED_STEPS


def test_readme_baseline_results_are_the_committed_runs():
    """Reproduction 5: the README's table is what baselines.py prints from its committed results."""
    import json

    path = REPRO / "results/baselines/results.json"
    if not path.exists():
        pytest.skip("reproduction 5 has no committed results yet")
    bl = exec_python_file(REPRO / "cpu/baselines.py", "baselines")
    bl.ws.ARMS.clear()
    bl.ws.ARMS.update({**bl.REPRODUCTION_4, **{name: () for name in bl.ARM_NAMES}})
    table = bl.ws.markdown(json.loads(path.read_text()))
    assert table in README.read_text(), (
        "rerun `.venv/bin/python paper_repro/cpu/baselines.py --report` into the README"
    )
    assert (REPRO / "results/baselines/results.md").read_text() == table


def _tensor_shapes(name: str) -> dict[str, tuple]:
    from selfflow.params import flatten

    cfg, shapes = compute.load(REPRO / "configs" / f"{name}.py")
    abstract = nnx.eval_shape(lambda: build_model(cfg, compute.token_dims(cfg, shapes)))
    return {k: tuple(v.shape) for k, v in flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param))).items()}


def test_row_18_warm_start_counts_are_the_configs():
    """The joint video-audio model (row 18) from its two sources with train.init_new=fresh: the
    counts its docstring and README row state, and no shared name with another shape (which
    init_new=fresh would still refuse)."""
    joint = _tensor_shapes("text_to_video_audio")
    counts, sources = {}, {name: _tensor_shapes(name) for name in ("text_to_video_625m", "multimodal_mixed")}
    for source, theirs in sources.items():
        assert all(theirs[k] == v for k, v in joint.items() if k in theirs), source
        shared = sum(k in theirs for k in joint)
        counts[source] = (shared, len(joint) - shared, sum(k not in joint for k in theirs))
    assert len(joint) == 311
    assert counts == {"text_to_video_625m": (305, 6, 0), "multimodal_mixed": (161, 150, 76)}
    assert all("audio" in k for k in joint if k not in sources["text_to_video_625m"])
    config = (REPRO / "configs" / "text_to_video_audio.py").read_text()
    assert "305 of this model's 311 tensors" in config and "161 are shared and 150 new" in config
