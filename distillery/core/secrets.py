"""Secrets never leave the process: header parsing, and scrubbing of anything key-like before a config or a message is
written."""

from __future__ import annotations

import os
import re

from distillery.core.errors import UserError

__all__ = ["parse_headers", "redacted", "scrub", "ENV_NAME", "NO_KEY", "env_name_problem", "api_key", "looks_like_key"]

REDACTED = "<redacted>"
# An HTTP header name (RFC 9110 token) and an environment variable name.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Values that look like credentials wherever they appear: provider key prefixes, bearer tokens,
# a URL's user:password@ and a URL's key=/token= query parameters.
SECRET_PATTERNS = [  # (pattern, replacement): group 1, where there is one, is kept
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"\b(?:hf|gh[pousr]|glpat|xox[abprs])[_\-][A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), REDACTED),
    (re.compile(r"(?i)(\bbearer\s+)\S+"), r"\g<1>" + REDACTED),
    (re.compile(r"(://)[^/@\s]+@"), r"\g<1>" + REDACTED + "@"),
    (re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|secret|password|sig)=)[^&#\s]+"), r"\g<1>" + REDACTED),
]
NO_KEY = "none"  # --api-key-env none: the server needs no key


def env_name_problem(value: str) -> str | None:
    """None when ``value`` can be the name of the variable that holds a key; else what is expected.

    A POSIX name (letters, digits, underscores; not starting with a digit) that does not look
    like a key itself: no provider key prefix (``sk-...``), and not a long run of letters and
    digits without an underscore (``abcdef0123456789...``: a hex or base62 key pasted into the
    wrong flag). ``none`` says that the server needs no key.
    """
    looks_like_key = (
        scrub(value) != value
        or (len(value) >= 16 and "_" not in value and any(c.isdigit() for c in value))
        or len(value) >= 32
        and "_" not in value
    )
    if value == NO_KEY or (ENV_NAME.fullmatch(value) and not looks_like_key):
        return None
    return (
        "the name of the environment variable that holds the key (e.g. OPENAI_API_KEY), or 'none' for a "
        "server that needs "
        "no key; export the key in a variable and pass the variable's name"
    )


SECRET_KEYS = re.compile(r"(?i)(api[_-]?key|token|secret|password|passwd|credential)$")


def parse_headers(entries: list[str]) -> dict[str, str]:
    """``['Name: value', ...]`` as HTTP reads header lines: split at the first ':', name and value stripped.

    A malformed entry is a :class:`UserError` that names the entry by position only: the value
    may be a key, and no message shows one.
    """
    headers = {}
    for i, entry in enumerate(entries, 1):
        name, colon, value = str(entry).partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not HEADER_NAME.fullmatch(name) or not value or "\n" in value or "\r" in value:
            raise UserError(
                f"extra_headers: expected 'Name: value' entries (e.g. 'api-key: KEY'), comma-separated; entry {i} of "
                f"{len(entries)} is not one (its text is not shown, it may hold a secret)"
            )
        headers[name] = value
    return headers


def scrub(text: str) -> str:
    """``text`` with credential-like pieces replaced (see :func:`redacted`)."""
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redacted(config: dict) -> dict:
    """A copy of a resolved config (``asdict(cfg)``) that is safe to write next to the outputs.

    Every extra header keeps its name and loses its value (at any depth, so a manifest's
    ``{"config": ...}`` works too); the value of a top-level key named like a secret
    (``*api_key``, ``*token``, ``*password``, ...) is replaced; ``api_key_env`` stays when it is
    a variable name and goes when it looks like the key itself; in every other string,
    credential-like pieces (``sk-...``, ``hf_...``, ``Bearer ...``, a URL's ``user:pass@`` or
    ``?key=``) are replaced.
    """

    def walk(key: str, value, top: bool):
        if isinstance(value, dict):
            return {k: walk(str(k), v, False) for k, v in value.items()}
        if key == "extra_headers" and isinstance(value, (str, list, tuple)):
            entries = value.split(",") if isinstance(value, str) else value
            return [f"{str(h).partition(':')[0].strip()}: {REDACTED}" if ":" in str(h) else REDACTED for h in entries]
        if isinstance(value, (list, tuple)):
            return [walk(key, v, top) for v in value]
        if not isinstance(value, str) or not value:
            return value
        if key == "api_key_env":
            return REDACTED if env_name_problem(value) else value
        if top and SECRET_KEYS.search(
            key
        ):  # a setting's name, not a label or verbalizer named 'token' in a nested task
            return REDACTED
        return scrub(value)

    return {k: walk(str(k), v, True) for k, v in config.items()}


PLACEHOLDER_KEY = "no-key"  # --api-key-env none: the client needs some string; a server without keys ignores it
# Keys that are valid variable names: a provider's prefix (OpenAI/Stripe sk_, Groq gsk_, GitHub github_pat_ and
# ghp_, Hugging Face hf_, Replicate r8_, Slack xoxb-, ...) and 16 or more characters after it; AWS and Google
# keys; a JWT or other base64 JSON (eyJ...).
KEY_PREFIX = re.compile(
    r"(?:(?:sk|pk|rk|gsk|github_pat|gh[pousr]|glpat|hf|r8|xox[abprs]|pplx|nvapi|xai)[_-].{16,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza.{30,}|eyJ.{16,})"
)


def looks_like_key(value: str) -> bool:
    """True when ``value`` (given as ``--api-key-env``) looks like a key rather than a variable's name: not a
    variable name at all, a provider's key prefix, or a part between underscores that reads as random (16 or
    more characters mixing letters with digits or upper with lower case, or 24 or more of anything)."""
    if value == NO_KEY:
        return False
    if env_name_problem(value) or KEY_PREFIX.fullmatch(value):
        return True
    for part in value.split("_"):
        mixed = any(c.isdigit() for c in part) and any(c.isalpha() for c in part)
        cased = any(c.islower() for c in part) and any(c.isupper() for c in part)
        if len(part) >= 24 or (len(part) >= 16 and (mixed or cased)):
            return True
    return False


def api_key(name: str) -> str:
    """The API key held by the environment variable ``name`` (``--api-key-env``; a placeholder for ``none``).

    A value that looks like a key, or a variable that is unset or empty, is one line that never shows a value
    (an unset variable is named: by then it looks like a name)."""
    if looks_like_key(name):
        raise UserError(
            "--api-key-env: expected the NAME of an environment variable holding the key (e.g. OPENAI_API_KEY), "
            "or 'none' for a server that needs no key; found a value that looks like a key (not shown); export "
            "the key in a variable (export OPENAI_API_KEY=...) and pass the variable's name"
        )
    if name == NO_KEY:
        return PLACEHOLDER_KEY
    key = os.environ.get(name, "")
    if not key:  # a name by now (a value that is not one was refused above): the name only, never a value
        raise UserError(
            f"--api-key-env {name}: expected the API key in that environment variable; found it unset or empty; "
            f"export {name}=YOUR_KEY, or pass --api-key-env none for a server that needs no key"
        )
    return key
