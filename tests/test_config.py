"""Config: overrides, defaults derived from depth, JSON round trip."""

import pytest

from selfflow import config as config_lib
from selfflow.config import Config, ConfigError, ModelConfig, ObjectiveConfig


def test_default_layers_follow_depth():
    cfg = Config(model=ModelConfig(preset="XL/2"))
    assert (cfg.depth, cfg.student_layer, cfg.teacher_layer) == (28, 8, 20)  # the official 8 / 20
    cfg = Config(model=ModelConfig(preset="B/2"))
    assert (cfg.student_layer, cfg.teacher_layer) == (4, 8)


def test_depth_one_flow_matching_is_valid_but_self_flow_is_not():
    fm = Config(model=ModelConfig(depth=1), objective=ObjectiveConfig(kind="flow_matching"))
    config_lib.validate(fm)
    with pytest.raises(ConfigError, match="depth >= 2"):
        config_lib.validate(Config(model=ModelConfig(depth=1)))


def test_overrides_parse_types_and_reject_unknown_keys():
    cfg = config_lib.apply_overrides(
        Config(),
        ["objective.gamma=0.5", "model.preset=B/2", "objective.teacher_layer=9", "optim.learning_rate=3e-4"],
    )
    assert cfg.objective.gamma == 0.5 and cfg.model.preset == "B/2"
    assert cfg.teacher_layer == 9 and cfg.optim.learning_rate == 3e-4
    assert config_lib.apply_overrides(Config(), ["objective.gamma=1"]).objective.gamma == 1.0
    with pytest.raises(ConfigError, match="unknown config key 'model.widht'"):
        config_lib.apply_overrides(Config(), ["model.widht=3"])


def test_json_round_trip_keeps_resolved_values():
    cfg = config_lib.apply_overrides(Config(), ["model.preset=S/2", "objective.mask_ratio=0.5"])
    back = config_lib.from_dict(config_lib.resolved_dict(cfg))
    assert config_lib.resolved_dict(back) == config_lib.resolved_dict(cfg)
    assert back.model.hidden_size == 384 and back.objective.student_layer == cfg.student_layer
    with pytest.raises(ConfigError, match="unknown key"):
        config_lib.from_dict({"model": {"colour": 1}})


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            "from selfflow.config import Config, ModelConfig\nCONFIG = Config(model=ModelConfig(widht=3))\n",
            r"exp\.py:2: TypeError: .*widht",
        ),
        ("CONFIG = (\n", r"exp\.py:1: SyntaxError"),
        ("CONFIG = {'seed': 0}\n", r"exp\.py: expected a module-level CONFIG"),
    ],
)
def test_broken_experiment_file_names_file_and_line(tmp_path, body, expected):
    path = tmp_path / "exp.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=expected):
        config_lib.load_config_file(path)


def test_configs_saved_before_time_embedding_existed_keep_embedding_tau():
    from selfflow.config import from_dict, resolved_dict

    saved = resolved_dict(Config())
    assert saved["model"]["time_embedding"] == "sit"  # new runs embed 1 - tau, as the official model
    del saved["model"]["time_embedding"]
    assert from_dict(saved).model.time_embedding == "tau"
    assert "time_embedding" not in saved["model"]  # the caller's dict is not modified
