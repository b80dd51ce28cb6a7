"""Real servers the tests start (llama.cpp's, Label Studio's): wait until one answers, and when it
dies at start say why in one line, naming the package and version its last traceback ends in
(``label-studio exited at start (exit 1): TypeError: Unknown option 'send_default_pii', raised in
sentry-sdk 3.0.0 (sentry_sdk/client.py:102)``), never "connection refused" after a wait."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from importlib import metadata
from pathlib import Path

FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
SITE = re.compile(r"^(?P<site>.*[/\\](?:site|dist)-packages)[/\\](?P<rest>.+)$")
MOST = 300  # characters of the exception's message shown at most


def _owner(path: str) -> str:
    """``sentry-sdk 3.0.0 (sentry_sdk/client.py`` for a file inside an installed package, else the path."""
    found = SITE.match(path)
    if not found:
        return path
    site, rest = found["site"], found["rest"].replace("\\", "/")
    top = rest.split("/")[0]
    for dist in metadata.distributions(path=[site]):
        if any(str(f).replace("\\", "/").split("/")[0] == top for f in dist.files or ()):
            return f"{dist.metadata['Name']} {dist.version} ({rest}"
    return f"{top} ({rest}"


def why_it_died(name: str, returncode: int | None, log: str) -> str:
    """One line: the server, its exit code, the last traceback's exception and the package and
    version of the file it was raised in (the log's last line when it holds no traceback)."""
    lines = log.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    head = f"{name} exited at start (exit {returncode})"
    if not starts:
        last = next((line.strip() for line in reversed(lines) if line.strip()), "it printed nothing")
        return f"{head}: {last[:MOST]}"
    block = lines[starts[-1] + 1 :]
    frames = [(m["path"], m["line"]) for m in map(FRAME.match, block) if m]
    error = next((line for line in block if line and not line[0].isspace()), "no exception line")
    where = f", raised in {_owner(frames[-1][0])}:{frames[-1][1]})" if frames else ""
    return f"{head}: {error.strip()[:MOST]}{where}"


def wait_until_up(name: str, proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    """Poll ``url`` until it answers. Raises ``RuntimeError`` with :func:`why_it_died`'s line as
    soon as the process exits, and with the log's last line once ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(why_it_died(name, proc.returncode, log_path.read_text(errors="replace"))) from None
            if time.monotonic() > deadline:
                tail = (log_path.read_text(errors="replace").strip().splitlines() or ["an empty log"])[-1][:MOST]
                waited = f"{name} did not answer {url} within {timeout:.0f} s"
                raise RuntimeError(f"{waited}; its log ends: {tail}") from None
            time.sleep(0.3)
