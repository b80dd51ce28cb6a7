"""Bad input: one line that says what was expected, what was found and how to fix it; exit 2."""

import pandas as pd
import pytest

from distillery import cli as distillery_cli
from distillery.annotate import AnnotateConfig, InputError, load_rows


def _cli(capsys, *args):
    code = distillery_cli.main(list(args))
    err = capsys.readouterr().err.strip()
    return code, err


def _load(path, **kw):
    return load_rows(AnnotateConfig(data=str(path), **{"limit": 0, **kw}), ["negative", "positive"])


def test_missing_file(tmp_path, capsys):
    code, err = _cli(capsys, "annotate", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o"))
    assert code == 2 and len(err.splitlines()) == 1
    assert "input file not found" in err and "--data" in err


def test_unreadable_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes("text,label\ncaf\xe9 ok,positive\n".encode("latin-1"))
    with pytest.raises(InputError, match="cannot read .* as csv.*UTF-8"):
        _load(path)


def test_missing_column_names_the_found_columns_and_the_flag(reviews_csv):
    with pytest.raises(InputError, match=r"expected a column 'text'; found review, sentiment; pass --text-column"):
        _load(reviews_csv)


def test_empty_column_and_empty_texts(tmp_path):
    path = tmp_path / "empty.csv"
    pd.DataFrame({"text": ["", ""], "label": ["positive", "negative"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="column 'text' is empty"):
        _load(path, label_column="label")
    pd.DataFrame({"text": ["good", "", "bad"], "label": ["positive", "negative", "negative"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="found 1 empty .*--drop-empty"):
        _load(path, label_column="label")
    rows = _load(path, label_column="label", drop_empty=True, balance=False)
    assert sorted(rows["text"]) == ["bad", "good"]


def test_gold_labels_outside_the_label_set(tmp_path):
    path = tmp_path / "three.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["positive", "neutral", "negative"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"must be in the label set \['negative', 'positive'\]; found \['neutral'\]"):
        _load(path, label_column="label")


def test_fewer_than_two_labels(reviews_csv, tmp_path, capsys):
    code, err = _cli(
        capsys,
        "annotate",
        "--data",
        str(reviews_csv),
        "--text-column",
        "review",
        "--labels",
        "positive",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "at least two labels" in err


def test_model_path_that_does_not_exist(reviews_csv, tmp_path, capsys):
    code, err = _cli(
        capsys,
        "annotate",
        "--data",
        str(reviews_csv),
        "--text-column",
        "review",
        "--teacher",
        str(tmp_path / "no_model"),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "model path not found" in err and len(err.splitlines()) == 1


def test_load_in_4bit_on_cpu_is_a_clear_error(reviews_csv, tiny_llama, tmp_path, capsys):
    code, err = _cli(
        capsys,
        "annotate",
        "--data",
        str(reviews_csv),
        "--text-column",
        "review",
        "--teacher",
        str(tiny_llama),
        "--device",
        "cpu",
        "--load-in-4bit",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "--load-in-4bit needs a CUDA GPU" in err


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: 10\nlimt: 5\n")
    code, err = _cli(capsys, "annotate", "--config", str(cfg))
    assert code == 2 and "unknown key 'limt'" in err


def test_flags_override_the_config_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("limit: 10\nalpha: 0.8\nout: from_file\n")
    args = distillery_cli.build_parser().parse_args(["run", "--config", str(cfg), "--limit", "20"])
    values = distillery_cli.resolve(args)
    assert values == {"limit": 20, "alpha": 0.8, "out": "from_file"}
    assert distillery_cli.build(distillery_cli.DistillConfig, values).alpha == 0.8


def test_sampling_is_seeded_balanced_and_ids_are_stable(tmp_path):
    path = tmp_path / "dup.csv"
    pd.DataFrame(
        {
            "text": ["same", "same", "x", "y", "z", "w"],
            "label": ["positive", "positive", "negative", "negative", "negative", "positive"],
        }
    ).to_csv(path, index=False)
    a = _load(path, label_column="label", limit=4, seed=3)
    b = _load(path, label_column="label", limit=4, seed=3)
    assert a.equals(b) and a["gold"].value_counts().to_dict() == {"negative": 2, "positive": 2}
    every = _load(path, label_column="label", balance=False)
    assert every["id"].is_unique and len(every) == 6


def test_split_column_is_kept_and_bad_values_are_refused(tmp_path):
    path = tmp_path / "split.csv"
    pd.DataFrame(
        {
            "text": [f"row {i}" for i in range(6)],
            "label": ["negative", "positive"] * 3,
            "part": ["train", "train", "test", "train", "test", "test"],
        }
    ).to_csv(path, index=False)
    rows = _load(path, split_column="part", balance=False)
    assert dict(zip(rows["text"], rows["split"])) == {
        f"row {i}": s for i, s in enumerate(["train", "train", "test", "train", "test", "test"])
    }
    pd.DataFrame({"text": ["a", "b"], "label": ["negative", "positive"], "part": ["train", "dev"]}).to_csv(
        path, index=False
    )
    with pytest.raises(InputError, match="expected 'train' or 'test'.*dev"):
        _load(path, split_column="part")
    with pytest.raises(InputError, match="expected a column 'nope'"):
        _load(path, split_column="nope")
