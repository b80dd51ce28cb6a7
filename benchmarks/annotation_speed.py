"""Local annotation speed: one-forward-pass label scoring vs generate-and-parse, same process.

    python benchmarks/annotation_speed.py [--rows 64]

Same model (the embedded SmolLM2-135M-Instruct), same rows (built-in tweets), same prompt
(chat template + answer prefix "The sentiment is"), one process, one run:
- baseline: what the reference projects do: greedy `generate` of a few tokens per row at
  batch 1, then parse the first label word out of the text;
- the same generate-and-parse at batch 16 (a stronger baseline);
- ours: `VerbalizerScorer` (one forward pass, every label's full token sequence) at batch
  1/4/16/32, with and without the shared-prefix KV cache;
- the prefix cache again on a 6-shot prompt, whose shared prefix is longer than a tweet.
Batches hold rows of similar length, as `distillery annotate` builds them (for every method).
Labels are compared uncalibrated (generation cannot be calibrated). Prints a table and writes
benchmarks/results/annotation_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import print_table, write_result

from distillery.annotate import AnnotateConfig, load_rows, load_task
from distillery.annotate.backends import build_teacher

SHOTS = [
    {"text": "just got back from the beach, best day ever!!", "label": "positive"},
    {"text": "my flight got cancelled again. so tired of this airline", "label": "negative"},
    {"text": "can't stop listening to the new album, it's brilliant", "label": "positive"},
    {"text": "woke up sick on my birthday. great.", "label": "negative"},
    {"text": "thanks everyone for the kind messages today, you made my week", "label": "positive"},
    {"text": "the update broke my phone and support won't answer", "label": "negative"},
]


def generate_and_parse(teacher, texts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy generation, then the first label word found in the generated text ('' if none)."""
    tok, model, labels = teacher.tokenizer, teacher.scorer.model, teacher.task.labels
    pad = teacher.scorer.pad_id
    answers = []
    for b in range(0, len(texts), batch_size):
        prompts = [teacher.prompt_ids(t) for t in texts[b : b + batch_size]]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        for row in tok.batch_decode(out[:, width:], skip_special_tokens=True):
            words = [w.strip(".,!:;\"'").lower() for w in row.split()]
            answers.append(next((w for w in words if w in labels), ""))
    return answers


def score(teacher, texts: list[str], batch_size: int) -> list[str]:
    labels = teacher.task.labels
    out = []
    for b in range(0, len(texts), batch_size):
        out += [
            labels[max(range(len(labels)), key=lambda k: a.logprobs[k])]
            for a in teacher.score(texts[b : b + batch_size])
        ]
    return out


def timed(fn, teacher, texts: list[str], batch_size: int, *rest) -> tuple[float, list[str]]:
    """Run ``fn`` on the texts sorted by length (as `distillery annotate` batches them); labels in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    start = time.perf_counter()
    sorted_labels = fn(teacher, [texts[i] for i in order], batch_size, *rest)
    seconds = time.perf_counter() - start
    labels = [""] * len(texts)
    for i, label in zip(order, sorted_labels):
        labels[i] = label
    return seconds, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=5, help="baseline: tokens generated per row")
    args = parser.parse_args()
    started = time.perf_counter()
    task = load_task("sentiment-binary")
    texts = load_rows(AnnotateConfig(limit=args.rows, seed=3), task.labels)["text"].tolist()
    teacher = build_teacher(AnnotateConfig(device="cpu", settings={"prefix_cache": False}), task)
    score(teacher, texts[:4], 4)  # warm-up

    rows, reference = [], None

    def add(method: str, prompt: str, batch: int, seconds: float, labels: list[str]) -> None:
        nonlocal reference
        reference = reference or labels
        same = sum(a == b for a, b in zip(labels, reference)) / len(labels)
        rows.append(
            {
                "method": method,
                "prompt": prompt,
                "batch": batch,
                "rows_per_s": len(labels) / seconds,
                "s_per_row": seconds / len(labels),
                "unparsed": labels.count(""),
                "same_label_as_baseline": same,
            }
        )
        print(f"  {method} ({prompt}, batch {batch}): {len(labels) / seconds:.2f} rows/s", flush=True)

    add("generate+parse", "zero-shot", 1, *timed(generate_and_parse, teacher, texts, 1, args.max_new_tokens))
    add("generate+parse", "zero-shot", 16, *timed(generate_and_parse, teacher, texts, 16, args.max_new_tokens))
    for batch in (1, 4, 16, 32):
        add("score, no prefix cache", "zero-shot", batch, *timed(score, teacher, texts, batch))
    teacher.scorer.set_prefix(teacher.shared_prefix_ids())
    for batch in (1, 4, 16, 32):
        add("score + prefix cache", "zero-shot", batch, *timed(score, teacher, texts, batch))

    teacher.task.few_shot = SHOTS  # the 6-shot prompt: a shared prefix much longer than a tweet
    teacher.scorer.set_prefix([])
    few_off = timed(score, teacher, texts, 16)
    teacher.scorer.set_prefix(teacher.shared_prefix_ids())
    few_on = timed(score, teacher, texts, 16)
    prefix_tokens = len(teacher.scorer.prefix_ids)
    text_tokens = sum(len(teacher.tokenizer(t, add_special_tokens=False).input_ids) for t in texts) / len(texts)
    reference = few_off[1]  # compare the 6-shot runs with each other
    rows.append(
        {
            "method": "score, no prefix cache",
            "prompt": "6-shot",
            "batch": 16,
            "rows_per_s": len(texts) / few_off[0],
            "s_per_row": few_off[0] / len(texts),
            "unparsed": 0,
            "same_label_as_baseline": None,
        }
    )
    rows.append(
        {
            "method": "score + prefix cache",
            "prompt": "6-shot",
            "batch": 16,
            "rows_per_s": len(texts) / few_on[0],
            "s_per_row": few_on[0] / len(texts),
            "unparsed": 0,
            "same_label_as_baseline": None,
            "same_label_as_no_cache": sum(a == b for a, b in zip(few_on[1], few_off[1])) / len(texts),
        }
    )

    baseline = rows[0]["rows_per_s"]
    for row in rows:
        row["speedup_vs_baseline"] = row["rows_per_s"] / baseline
    print_table(
        rows,
        [
            "method",
            "prompt",
            "batch",
            "rows_per_s",
            "s_per_row",
            "speedup_vs_baseline",
            "unparsed",
            "same_label_as_baseline",
        ],
    )
    best = max(r["rows_per_s"] for r in rows if r["prompt"] == "zero-shot" and r["method"].startswith("score"))
    summary = {
        "best_score_vs_generate_batch1": best / baseline,
        "best_score_vs_generate_batch16": best / rows[1]["rows_per_s"],
        "prefix_cache_speedup_zero_shot_batch16": next(
            r["rows_per_s"]
            for r in rows
            if r["method"] == "score + prefix cache" and r["batch"] == 16 and r["prompt"] == "zero-shot"
        )
        / next(r["rows_per_s"] for r in rows if r["method"] == "score, no prefix cache" and r["batch"] == 16),
        "prefix_cache_speedup_6shot_batch16": few_off[0] / few_on[0],
        "six_shot_prefix_tokens": prefix_tokens,
        "mean_text_tokens": text_tokens,
    }
    for k, v in summary.items():
        print(f"{k}: {v:.2f}")
    write_result(
        "annotation_speed",
        {
            "command": " ".join(["python benchmarks/annotation_speed.py", *sys.argv[1:]]),
            "rows": len(texts),
            "max_new_tokens": args.max_new_tokens,
            "wall_s": time.perf_counter() - started,
            "summary": summary,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
