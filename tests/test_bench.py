"""`selfflow bench`: every candidate timed in one run, figures consistent with each other."""

import math
import re
from pathlib import Path

import pytest

from selfflow import cli, flops
from selfflow.bench import bench, format_report
from selfflow.config import Config, DataConfig, ObjectiveConfig, TrainConfig
from selfflow.tasks import Task

from helpers_config import tiny_model

ROOT = Path(__file__).resolve().parents[1]

CFG = Config(
    model=tiny_model(depth=3),
    data=DataConfig(image_size=8),
    objective=ObjectiveConfig(student_layer=1, teacher_layer=2),
    train=TrainConfig(batch_size=4),
)


@pytest.fixture(scope="module")
def report():
    return bench(CFG, rounds=2, steps_per_round=1, candidates=True, sample_steps=2)


def test_bench_times_every_candidate_with_its_model_flops(report):
    rows = report["rows"]
    assert set(rows) >= {
        "fm",
        "selfflow",
        "selfflow_bf16",
        "per_token_conditioning",
        "untruncated_teacher",
        "remat",
        "sampling",
    }
    lt = Task(CFG).layouts[0]
    sf = flops.train_step_flops(CFG, lt.layout, Task(CFG).token_dims, 4)
    assert rows["selfflow"]["flops"] == rows["selfflow_bf16"]["flops"] == sf
    assert rows["fm"]["flops"] < sf < rows["untruncated_teacher"]["flops"]
    for name, row in rows.items():
        assert row["seconds"] > 0
        assert math.isclose(row["mfu"], row["flops"] / row["seconds"] / report["peak_flops"][row["mfu_of"]])
        if name not in ("sampling",) and not name.startswith("torch"):
            assert row["recompiles"] == 0 and row["peak_bytes"] > 0
    assert rows["selfflow_bf16"]["mfu_of"] == "bfloat16" and rows["selfflow"]["mfu_of"] == "float32"
    assert report["selfflow_over_fm"] == rows["selfflow"]["seconds"] / rows["fm"]["seconds"]
    assert report["mfu"] == rows["selfflow"]["mfu"]


def test_report_ends_with_the_summary_line(report):
    last = format_report(report).splitlines()[-1]
    m = re.fullmatch(
        r"selfflow_over_fm=(\d+\.\d{3}) mfu=(\d+\.\d{3}) selfflow_over_torch=(\d+\.\d{3}|nan)", last
    )
    assert m, last
    assert float(m[1]) == round(report["selfflow_over_fm"], 3)
    assert float(m[2]) == round(report["mfu"], 3)
    torch = report["selfflow_over_torch"]
    assert (m[3] == "nan") == math.isnan(torch)
    if not math.isnan(torch):
        assert float(m[3]) == round(torch, 3)


def test_default_config_is_in_the_package_and_is_experiments_bench_s2():
    """`selfflow bench` without a file benches selfflow.bench.default_config (an installed wheel has
    no experiments/ folder); the experiment file is the same config."""
    from selfflow.bench import default_config
    from selfflow.config import exec_python_file, validate

    assert cli._parser().parse_args(["bench"]).config is None
    packaged = validate(default_config())
    assert packaged == exec_python_file(ROOT / "experiments" / "bench_s2.py", "bench_s2").CONFIG
    assert packaged.model.preset == "S/2" and packaged.data.image_size == 32
