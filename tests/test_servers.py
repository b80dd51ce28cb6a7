"""The helper that starts the tests' real servers (tests/servers.py): a server that dies at start
is one line naming the package and version its traceback ends in, at once, not after a wait."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from conftest import stop_server
from servers import wait_until_up, why_it_died

BROKEN = """
def init(**options):
    raise TypeError("Unknown option 'send_default_pii'")
"""


def _free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/api/version"


def _start(tmp_path, script: str) -> tuple[subprocess.Popen, object]:
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path


def _site_with_a_broken_package(tmp_path):
    """A site-packages folder holding ``brokenpkg`` (distribution ``broken-pkg`` 3.0.0), whose
    ``init()`` raises as sentry-sdk 3.0.0 did inside label-studio 1.23.2."""
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    (site / "brokenpkg").mkdir(parents=True)
    (site / "brokenpkg" / "__init__.py").write_text(BROKEN)
    info = site / "broken_pkg-3.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 3.0.0\n")
    (info / "RECORD").write_text("brokenpkg/__init__.py,,\nbroken_pkg-3.0.0.dist-info/METADATA,,\n")
    return site


def test_a_server_dying_at_start_is_one_line_naming_the_package_and_version(tmp_path):
    site = _site_with_a_broken_package(tmp_path)
    script = (
        f"import sys, time; sys.path.insert(0, {str(site)!r}); print('starting the server'); time.sleep(1)\n"
        "import brokenpkg\n"
        "def init_sentry():\n"
        "    brokenpkg.init(send_default_pii=True)\n"
        "init_sentry()\n"
    )
    proc, log_path = _start(tmp_path, script)
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError) as caught:
            wait_until_up("fake-server", proc, _free_url(), log_path, timeout=60)
    finally:
        stop_server(proc)
    line = str(caught.value)
    assert time.monotonic() - started < 20, "the death was seen only after a wait"
    assert "\n" not in line and "refused" not in line
    assert line.startswith("fake-server exited at start (exit 1): TypeError: Unknown option 'send_default_pii'")
    assert line.endswith("raised in broken-pkg 3.0.0 (brokenpkg/__init__.py:3)")


def test_the_last_traceback_counts_and_a_log_without_one_gives_its_last_line():
    chained = (
        "Traceback (most recent call last):\n"
        '  File "/x/site-packages/first/a.py", line 1, in f\n'
        "KeyError: 'a'\n\nDuring handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        '  File "/srv/app/manage.py", line 7, in main\n'
        "ValueError: " + "v" * 1000 + "\n"
    )
    line = why_it_died("app", 2, chained)
    assert line.startswith("app exited at start (exit 2): ValueError: vvv") and "KeyError" not in line
    assert line.endswith(", raised in /srv/app/manage.py:7)") and len(line) < 400
    assert why_it_died("app", 3, "starting\nerror: port 8080 is in use\n\n") == (
        "app exited at start (exit 3): error: port 8080 is in use"
    )
    assert why_it_died("app", -9, "") == "app exited at start (exit -9): it printed nothing"


def test_a_server_that_stays_silent_times_out_with_its_log_and_one_that_answers_is_up(tmp_path):
    proc, log_path = _start(tmp_path, "import time; print('loading the model', flush=True); time.sleep(60)")
    try:
        with pytest.raises(RuntimeError, match=r"did not answer .* within 2 s; its log ends: loading the model"):
            wait_until_up("slow-server", proc, _free_url(), log_path, timeout=2)
    finally:
        stop_server(proc)
    url = _free_url()
    port = url.split(":")[2].split("/")[0]
    serve = f"import http.server as h; h.test(h.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')"
    proc, log_path = _start(tmp_path, serve)
    try:
        wait_until_up("http.server", proc, f"http://127.0.0.1:{port}/", log_path, timeout=30)
        assert proc.poll() is None
    finally:
        stop_server(proc)
