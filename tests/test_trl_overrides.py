"""Any field of TRL's trainer config reaches it as trl.KEY=VALUE, checked against the installed TRL."""

from __future__ import annotations

import pytest

from r1v3 import config, training
from r1v3.errors import UserError
from stages import rl, sft

RL = {"model": "m", "data": "d", "name": "n"}
SFT = {"model": "m", "data": "d", "name": "n", "trainable": "connector"}


def test_an_override_reaches_grpo_config(tmp_path):
    cfg = config.load(rl.Config, stage="rl", options=RL,
                      overrides=["trl.epsilon_high=0.28", "trl.mask_truncated_completions=true", "trl.top_entropy_quantile=0.2"])
    args = rl._arguments(cfg, tmp_path)
    assert (args.epsilon_high, args.mask_truncated_completions, args.top_entropy_quantile) == (0.28, True, 0.2)
    assert config.to_dict(cfg)["trl"] == {"epsilon_high": 0.28, "mask_truncated_completions": True,
                                          "top_entropy_quantile": 0.2}  # what the manifest records
    assert config.resume_settings(cfg) != config.resume_settings(config.load(rl.Config, stage="rl", options=RL))


def test_a_recipe_section_s_trl_mapping_merges_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("rl:\n  trl:\n    epsilon_high: 0.3\n    loss_type_unused: 1\n")
    with pytest.raises(UserError, match=r"trl\.loss_type_unused is not a field of TRL .*GRPOConfig"):
        config.load(rl.Config, stage="rl", path=recipe, options=RL)
    recipe.write_text("rl:\n  trl:\n    epsilon_high: 0.3\n")
    cfg = config.load(rl.Config, stage="rl", path=recipe, options=RL, overrides=["trl.max_grad_norm=0.5"])
    assert cfg.trl == {"epsilon_high": 0.3, "max_grad_norm": 0.5}
    assert sft._arguments(config.load(sft.Config, stage="sft", options=SFT, overrides=["trl.max_grad_norm=0.5"]),
                          tmp_path).max_grad_norm == 0.5


@pytest.mark.parametrize("override, message", [
    ("trl.epsilon_hihg=0.28", r"trl\.epsilon_hihg is not a field .* \(similar: epsilon, epsilon_high"),
    ("trl.epsilon_high=high", r"trl\.epsilon_high must be float"),
    ("trl.mask_truncated_completions=3", r"trl\.mask_truncated_completions must be bool"),
    ("trl.max_grad_norm=nan", r"trl\.max_grad_norm must be a finite number"),
])
def test_a_bad_key_or_value_is_one_line_naming_it(override, message):
    with pytest.raises(UserError, match=message):
        config.load(rl.Config, stage="rl", options=RL, overrides=[override])


@pytest.mark.parametrize("override, instead", [
    ("trl.learning_rate=1e-3", "--lr"), ("trl.num_generations=8", "--num-generations"),
    ("trl.per_device_train_batch_size=2", "--batch-size"), ("trl.report_to=wandb", "--report-to"),
])
def test_an_argument_r1v3_sets_names_the_setting_to_use(tmp_path, override, instead):
    cfg = config.load(rl.Config, stage="rl", options=RL, overrides=[override])
    with pytest.raises(UserError, match=f"r1v3 sets it; give {instead} instead"):
        rl._arguments(cfg, tmp_path)


def test_a_value_trl_refuses_is_one_line(tmp_path):
    cfg = config.load(rl.Config, stage="rl", options=RL, overrides=["trl.auto_find_batch_size=true"])
    with pytest.raises(UserError, match=r"trl\.auto_find_batch_size=True: TRL.s GRPOConfig refused it"):
        rl._arguments(cfg, tmp_path)


def test_shared_training_settings_are_mapped_once(tmp_path):
    s = sft._arguments(config.load(sft.Config, stage="sft", options=SFT), tmp_path)
    r = rl._arguments(config.load(rl.Config, stage="rl", options=RL), tmp_path)
    assert (s.learning_rate, s.lr_scheduler_type.value, s.per_device_train_batch_size) == (2e-5, "cosine", 8)
    assert (r.learning_rate, r.lr_scheduler_type.value, r.per_device_train_batch_size, r.gradient_accumulation_steps,
            r.save_steps) == (1e-5, "constant", 4, 32, 20)
    assert training.trl_arguments.__module__ == "r1v3.training"
