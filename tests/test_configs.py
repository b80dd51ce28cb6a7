"""The shipped configs load into the stages' dataclasses and mean what their comments say."""

from pathlib import Path

import pytest
import yaml

from distillery import cli as distillery_cli

ROOT = Path(__file__).resolve().parents[1]


def test_llm_neo_config_sets_the_papers_values():
    path = ROOT / "data" / "configs" / "llm-neo-sst2.yaml"
    args = distillery_cli.build_parser().parse_args(["distill", "--config", str(path)])
    values = distillery_cli.resolve(args)  # unknown keys are errors
    assert set(values) == set(yaml.safe_load(path.read_text()))  # distill (online) uses every key
    distill, annotate = (distillery_cli.build(cls, values) for cls in distillery_cli.stage_configs("distill"))
    # LLM-Neo (Yang et al. 2024): LoRA r=4, alpha 8 on q/k/v, dropout 0.1; 1 epoch, batch 16, lr 5e-5,
    # weight decay 0.01, T=2, alpha 0.5, max length 128; Llama-3-8B in 4 bit teaching Llama-3.2-1B online.
    lora = distill.settings  # llama-lora's own settings
    assert (distill.student_kind, lora.lora_r, lora.lora_alpha, lora.lora_dropout) == ("llama-lora", 4, 8, 0.1)
    assert lora.lora_targets == ["q_proj", "k_proj", "v_proj"]
    assert (distill.epochs, distill.batch_size, distill.lr, distill.weight_decay) == (1, 16, 5e-5, 0.01)
    assert (distill.temperature, distill.alpha, distill.max_length) == (2.0, 0.5, 128)
    assert (distill.teacher_mode, distill.hard_labels, distill.val_fraction) == ("online", "gold", 0.0)
    assert distill.min_steps < 67_349 // 16, "the step floor must not lengthen the paper's one epoch"
    assert (annotate.teacher, annotate.settings.load_in_4bit, annotate.calibrate) == (
        "meta-llama/Meta-Llama-3-8B",
        True,
        "none",
    )
    assert (annotate.data, annotate.hf_config, annotate.limit, annotate.balance) == ("hf:glue", "sst2", 0, False)


def test_one_config_file_serves_every_stage_and_still_rejects_typos(tmp_path):
    path = ROOT / "data" / "configs" / "llm-neo-sst2.yaml"
    for command in ("annotate", "evaluate"):  # the README's second and third commands
        values = distillery_cli.resolve(distillery_cli.build_parser().parse_args([command, "--config", str(path)]))
        fields = set(distillery_cli.stage_fields(command))
        assert values and set(values) <= fields
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: smollm2\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rat'"):
        distillery_cli.resolve(distillery_cli.build_parser().parse_args(["annotate", "--config", str(bad)]))


@pytest.mark.parametrize("command", list(distillery_cli.STAGES))
def test_every_command_explains_itself(command, capsys):
    """--help of every command prints (a '%' in a help text once broke distill's)."""
    with pytest.raises(SystemExit) as done:
        distillery_cli.main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: distillery {command}" in text and "--config FILE" in text
