"""Training speed: `distillery distill` vs a plain Hugging Face `Trainer` fine-tune, same process.

    python benchmarks/training_speed.py [--annotations DIR]

Same student (the embedded MiniLM-L6 encoder), same training rows (every split=train row) and
teacher labels (from an annotation run: by default the SST-2 run of benchmarks/quality.py, else the demo run), batch 16,
lr 5e-5, weight decay 0.01, 10% warm-up, max length 128, one epoch, no validation or saving.
Baselines, all `Trainer` with its cross-entropy on the teacher's hard labels:
- padding every row to max length 128 (the classic recipe);
- dynamic padding (`DataCollatorWithPadding`), random batches (Trainer's default sampler);
- dynamic padding + `train_sampling_strategy="group_by_length"`.
Ours trains on hard + soft labels (α=0.5, T=2) with dynamic padding and length-grouped
batches. Examples/s = training rows / wall time of the training loop (`trainer.train()` for the
baselines), best of --repeats interleaved runs. Prints a table and writes
benchmarks/results/training_speed.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch
from common import ROOT, print_table, write_result
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from distillery.distill import DistillConfig, distill, load_student, load_training_rows

BENCH_RUN = ROOT / "data" / "runs" / "bench-quality-sst2" / "annotations"
DEMO_RUN = ROOT / "data" / "runs" / "demo" / "annotations"


def trainer_run(cfg: DistillConfig, rows, pad_to_max: bool, grouped: bool, work: Path) -> float:
    """Examples/s of a plain Trainer fine-tune on the teacher's hard labels."""
    tokenizer, model = load_student(cfg, rows.labels)
    frame = rows.train[["text", "hard"]].rename(columns={"hard": "labels"})
    data = datasets.Dataset.from_pandas(frame, preserve_index=False)
    padding = "max_length" if pad_to_max else False
    data = data.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.max_length, padding=padding),
        batched=True,
        remove_columns=["text"],
    )
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="linear",
        train_sampling_strategy="group_by_length" if grouped else "random",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    return len(data) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="annotation dir (default: the SST-2 quality run, else the demo run)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each method (interleaved); the table shows the best"
    )
    args = parser.parse_args()
    source = args.annotations or next((p for p in (BENCH_RUN, DEMO_RUN) if (p / "manifest.json").is_file()), None)
    if source is None:
        sys.exit(
            f"no annotations: expected {BENCH_RUN} or {DEMO_RUN}; run benchmarks/quality.py or 'distillery "
            "annotate' first, or pass --annotations"
        )
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp())
    cfg = DistillConfig(
        annotations=str(source),
        out=str(work),
        epochs=1,
        min_steps=0,
        lr=5e-5,
        max_length=128,
        val_fraction=0.0,
        evals_per_epoch=1,
    )
    rows = load_training_rows(cfg)
    lengths = [len(t) for t in rows.train["text"]]
    print(f"training rows: {len(rows.train)} from {source} (mean {sum(lengths) / len(lengths):.0f} characters)")

    methods = [
        ("Trainer, pad to max length", True, False),
        ("Trainer, dynamic padding", False, False),
        ("Trainer, dynamic padding + group_by_length", False, True),
        ("distillery distill (KD + CE, dynamic padding, length groups)", None, None),
    ]
    runs: dict[str, list[float]] = {name: [] for name, *_ in methods}
    for repeat in range(args.repeats):  # interleaved, so a slow spell of the machine hits every method
        for name, pad_to_max, grouped in methods:
            if pad_to_max is None:
                out = distill(
                    DistillConfig(
                        annotations=str(source),
                        out=str(work),
                        student=str(work / f"ours{repeat}"),
                        epochs=1,
                        min_steps=0,
                        lr=5e-5,
                        max_length=128,
                        val_fraction=0.0,
                        evals_per_epoch=1,
                    )
                )
                runs[name].append(json.loads((out / "train_summary.json").read_text())["train_rows_per_s"])
            else:
                runs[name].append(
                    trainer_run(cfg, rows, pad_to_max, grouped, work / f"{name.replace(' ', '_')}{repeat}")
                )
            print(f"  {name}: {runs[name][-1]:.1f} examples/s", flush=True)
    results = [{"method": name, "examples_per_s": max(values), "all_runs": values} for name, values in runs.items()]
    base = results[0]["examples_per_s"]
    for row in results:
        row["vs_trainer_max_length"] = row["examples_per_s"] / base
        row["vs_trainer_dynamic"] = row["examples_per_s"] / results[1]["examples_per_s"]
        row["vs_trainer_grouped"] = row["examples_per_s"] / results[2]["examples_per_s"]
    print_table(
        results, ["method", "examples_per_s", "vs_trainer_max_length", "vs_trainer_dynamic", "vs_trainer_grouped"]
    )
    write_result(
        "training_speed",
        {
            "command": " ".join(["python benchmarks/training_speed.py", *sys.argv[1:]]),
            "annotations": str(source.relative_to(ROOT) if source.is_relative_to(ROOT) else source),
            "rows": len(rows.train),
            "student": "MiniLM-L6 (embedded)",
            "wall_s": time.perf_counter() - started,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
