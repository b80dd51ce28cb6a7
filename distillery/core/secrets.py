"""Secrets never leave the process: header parsing, and scrubbing of anything key-like before a config or a message is
written."""

from __future__ import annotations

import re

from distillery.core.errors import UserError

__all__ = ["parse_headers", "redacted", "scrub", "ENV_NAME", "NO_KEY", "env_name_problem"]

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
