"""Teacher annotation and online-KD throughput of real model shapes, with random weights.

    python benchmarks/gpu_throughput.py                                  # on a GPU: Llama-3-8B / Llama-3.2-1B shapes
    python benchmarks/gpu_throughput.py --teacher smollm2 --device cpu   # this CPU: the embedded teacher
    python benchmarks/gpu_throughput.py --teacher tiny --device cpu --skip-kd --rows 32   # a smoke run

Compute does not depend on weight values, so a model built from a config (no download, no
checkpoint to carry) gives honest speed and memory figures. ``--teacher`` is a shape
(``llama-3-8b``, ``llama-3.2-1b``, ``tiny``) or any model ``distillery annotate`` accepts.

1. Annotation: ``distillery annotate``'s own path (``LocalTeacher`` + ``teacher_batches``,
   tokenization included) on ``--rows`` texts, for each (rows, tokens) batch cap in the sweep
   and for the automatic default, in bf16 (CUDA) or float32 (CPU), and in 4-bit with
   ``--load-in-4bit``. Rows/s, share of the device's peak FLOP/s (2 x parameters x tokens
   computed, the cached prefix not counted) and peak memory.
2. Online KD in LLM-Neo's setting (``--student-shape``, LoRA r=4 on q/k/v, batch 16, max
   length 128): ``distillery distill --teacher-mode online`` on the same rows; rows/s, share of
   peak (teacher 2·P·tokens + student 6·P·tokens) and mean GPU utilization when NVML is there.

Prints tables and writes benchmarks/results/gpu_throughput-DEVICE.json with the device named.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch
from common import ROOT, SHARED_DATA, print_table, write_result

from distillery.annotate import AnnotateConfig, load_task
from distillery.annotate.backends import AUTO_BATCH, build_teacher, teacher_batches
from distillery.core.models import gguf_to_plain, parameter_count, resolve_model

SHAPES = {  # the published configs' shapes (hidden, MLP, layers, heads, KV heads, vocab)
    "llama-3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    ),
}
SWEEP = [(16, 0), (64, 0), (128, 0), (512, 4096), (512, 8192), (512, 16384)]
CPU_SWEEP = [(1, 0), (4, 0), (8, 0), (16, 0), (32, 0), (64, 512), (64, 1024)]


def build_shape(name: str, tokenizer_dir: str, device: str, out: Path) -> str:
    """Save a random-weight Llama of a named shape (bf16) with a real tokenizer; returns its dir."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        **SHAPES[name], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return str(out)


def read_texts(path: Path, rows: int) -> list[str]:
    if path.is_file():
        return pd.read_csv(path, keep_default_na=False)["text"].tolist()[:rows]
    from distillery.annotate import load_rows

    print(f"{path} not found: using the built-in tweets")
    return load_rows(AnnotateConfig(limit=rows), ["negative", "positive"])["text"].tolist()


class Utilization:
    """Mean GPU utilization sampled every 0.2 s through NVML (None without pynvml or a GPU)."""

    def __enter__(self):
        self.samples, self.stop = [], threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception:  # no pynvml, no GPU
                return

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def time_annotation(teacher, texts: list[str], rows: int, tokens: int, peak: float) -> dict:
    """One pass over ``texts`` as ``distillery annotate`` batches them, after a warm-up batch."""
    cuda = torch.cuda.is_available()
    teacher.score(texts[: min(rows, 8)])
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    lengths = teacher.prompt_lengths(texts)
    batches = teacher_batches(lengths, rows, tokens)
    for batch in batches:
        teacher.score([texts[i] for i in batch])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = parameter_count(teacher.scorer.model)[1]
    flops = 2 * params * sum(lengths)
    return {
        "rows_cap": rows,
        "tokens_cap": tokens,
        "batches": len(batches),
        "rows_per_s": len(texts) / seconds,
        "tflops": flops / seconds / 1e12,
        "share_of_peak": flops / seconds / peak if peak else None,
        "parameters": params,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def time_online_kd(
    teacher_dir: str,
    student_dir: str,
    texts: list[str],
    device: str,
    four_bit: bool,
    out: Path,
    peak: float,
    teacher_params: int,
) -> dict:
    """``distill --teacher-mode online`` on ``texts`` for one epoch, LLM-Neo's LoRA settings."""
    from distillery.distill import DistillConfig, distill

    data = out / "kd_rows.csv"
    pd.DataFrame({"text": texts, "label": ["positive"] * len(texts)}).to_csv(data, index=False)
    source = AnnotateConfig(
        data=str(data),
        device=device,
        limit=0,
        test_fraction=0.0,
        calibrate="none",
        settings={"teacher": teacher_dir, "load_in_4bit": four_bit},
    )
    cfg = DistillConfig(
        out=str(out / "kd"),
        teacher_mode="online",
        student_kind="llama-lora",
        student_model=student_dir,
        device=device,
        batch_size=16,
        max_length=128,
        epochs=1,
        min_steps=0,
        val_fraction=0.0,
        settings={"lora_r": 4, "lora_alpha": 8},
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with Utilization() as util:
        start = time.perf_counter()
        student = distill(cfg, source)
        seconds = time.perf_counter() - start
    import json

    from transformers import AutoTokenizer

    summary = json.loads((student / "train_summary.json").read_text())
    tokens = sum(
        len(ids) for ids in AutoTokenizer.from_pretrained(student_dir)(texts, truncation=True, max_length=128).input_ids
    )
    flops = (
        2 * teacher_params + 6 * summary["total_parameters"]
    ) * tokens  # the teacher's prompt is longer: a lower bound
    return {
        "rows": len(texts),
        "wall_s": seconds,
        "rows_per_s_overall": len(texts) / seconds,
        "rows_per_s_training": summary["train_rows_per_s"],
        "gpu_utilization_mean": util.mean,
        "share_of_peak": flops / seconds / peak if peak else None,
        "peak_gib": summary["peak_memory_bytes"] / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--teacher",
        default="llama-3-8b",
        help="a shape (llama-3-8b, llama-3.2-1b, tiny) or a model spec (smollm2, a dir)",
    )
    parser.add_argument("--student-shape", default="llama-3.2-1b", help="online KD: the student's shape or model spec")
    parser.add_argument(
        "--tokenizer", default="smollm2", help="tokenizer for the random-weight shapes (a model spec or dir)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--load-in-4bit", action="store_true", help="also time the teacher in 4-bit NF4 (bitsandbytes, CUDA)"
    )
    parser.add_argument("--rows", type=int, default=872, help="texts to annotate (SST-2 validation has 872)")
    parser.add_argument("--kd-rows", type=int, default=512)
    parser.add_argument("--skip-kd", action="store_true")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="the device's dense bf16 peak (default: 800 for an H100, as issue #10 used)",
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "sst2_validation.csv")
    args = parser.parse_args()
    started = time.perf_counter()
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = 1e12 * (args.peak_tflops or (800.0 if "H100" in device_name else 0.0))
    texts = read_texts(args.data, args.rows)
    work = Path(tempfile.mkdtemp(prefix="gpu_throughput-"))

    def model_dir(spec: str) -> str:
        if spec in SHAPES:
            tokenizer = resolve_model(args.tokenizer)
            if tokenizer.endswith(".gguf"):
                from transformers import AutoModelForCausalLM

                tokenizer = gguf_to_plain(tokenizer, AutoModelForCausalLM)
            return build_shape(spec, tokenizer, args.device, work / spec)
        return spec

    teacher_dir = model_dir(args.teacher)
    task = load_task("sentiment-binary")
    rows = []
    for four_bit in [False, True] if args.load_in_4bit else [False]:
        teacher = build_teacher(
            AnnotateConfig(device=args.device, settings={"teacher": teacher_dir, "load_in_4bit": four_bit}), task
        )
        for cap in [AUTO_BATCH["cuda" if cuda else "cpu"], *(SWEEP if cuda else CPU_SWEEP)]:
            row = {
                "teacher": args.teacher,
                "weights": "nf4" if four_bit else str(teacher.scorer.model.dtype).removeprefix("torch."),
                **time_annotation(teacher, texts, *cap, peak),
            }
            row["default"] = cap == AUTO_BATCH["cuda" if cuda else "cpu"]
            rows.append(row)
            print(
                f"  {row['weights']} rows<={cap[0]} tokens<={cap[1] or '-'}: {row['rows_per_s']:.1f} rows/s", flush=True
            )
        del teacher
        if cuda:
            torch.cuda.empty_cache()
    print_table(
        rows,
        [
            "teacher",
            "weights",
            "rows_cap",
            "tokens_cap",
            "default",
            "batches",
            "rows_per_s",
            "tflops",
            "share_of_peak",
            "peak_gib",
        ],
    )

    kd = []
    if not args.skip_kd:
        student_dir = model_dir(args.student_shape)
        for four_bit in [True] if args.load_in_4bit else [False]:
            kd.append(
                {
                    "teacher_4bit": four_bit,
                    **time_online_kd(
                        teacher_dir,
                        student_dir,
                        texts[: args.kd_rows],
                        args.device,
                        four_bit,
                        work,
                        peak,
                        rows[0]["parameters"],
                    ),
                }
            )
        print_table(
            kd,
            [
                "teacher_4bit",
                "rows",
                "wall_s",
                "rows_per_s_overall",
                "rows_per_s_training",
                "gpu_utilization_mean",
                "share_of_peak",
                "peak_gib",
            ],
        )
    write_result(
        f"gpu_throughput-{'cuda' if cuda else 'cpu'}",
        {
            "command": " ".join(["python benchmarks/gpu_throughput.py", *sys.argv[1:]]),
            "device": device_name,
            "peak_tflops": peak / 1e12 or None,
            "texts": len(texts),
            "data": str(args.data.relative_to(ROOT.parent)) if args.data.is_file() else "tweets",
            "wall_s": time.perf_counter() - started,
            "results": rows,
            "online_kd": kd,
        },
    )


if __name__ == "__main__":
    main()
