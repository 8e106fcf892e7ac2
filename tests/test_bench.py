"""The bench report: both steps timed on the same model, last line machine-readable."""

import re

from selfflow.bench import bench_step_ratio, format_report
from selfflow.config import Config, DataConfig, ModelConfig, ObjectiveConfig, TrainConfig


def test_bench_times_both_objectives_and_reports_their_ratio():
    cfg = Config(model=ModelConfig(depth=2, hidden_size=32, num_heads=2, patch_size=4),
                 data=DataConfig(image_size=8), objective=ObjectiveConfig(student_layer=1, teacher_layer=2),
                 train=TrainConfig(batch_size=4))
    r = bench_step_ratio(cfg, rounds=2, steps_per_round=1)
    assert r["fm_step_s"] > 0 and r["selfflow_step_s"] > 0
    assert r["selfflow_over_fm"] == r["selfflow_step_s"] / r["fm_step_s"]
    assert (r["tokens"], r["batch"], r["teacher_layer"]) == (4, 4, 2)
    last = format_report(r).splitlines()[-1]
    assert re.fullmatch(r"selfflow_over_fm=\d+\.\d{3}", last)
    assert float(last.split("=")[1]) == round(r["selfflow_over_fm"], 3)
