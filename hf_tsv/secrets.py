"""What may leave the process: Hub tokens are checked once and never written, and whatever hf_tsv makes public
goes through one function here, which redacts every secret on the way out.

- :func:`normalize_token` / :func:`resolve_token`: a token given with surrounding whitespace (a pasted newline) is
  stripped; one with whitespace, control or non-ASCII characters inside is refused (:class:`TokenError`, whose
  message never holds it).
- :func:`redact`: known tokens (the one given, ``HF_TOKEN``, the stored login) and anything that looks like a Hub
  token (``hf_…``, ``api_…``, ``Bearer …``) become ``***``. Every file hf_tsv writes goes through it.
- :func:`public_text` / :func:`public_json` / :func:`public_command`: :func:`redact` plus local paths reduced to
  their last component (Hub ids and URLs are kept). Every published file, recorded command and message shown to
  someone else (a pushed repository, a model card, a Space visitor) goes through them.

Example:
    >>> redact("push failed: Bearer hf_AbCdEf123456 was refused")
    'push failed: Bearer *** was refused'
    >>> public_text("cannot read /home/me/models/base/config.json")
    'cannot read config.json'
    >>> public_command("hf-tsv merge /data/base me/ft-a ./ft-b -o /tmp/out --token hf_x", {"me/ft-a"})
    "hf-tsv merge base me/ft-a ft-b -o out --token '***'"
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable
from typing import Any

from .errors import TokenError

REDACTED = "***"
# argparse ``dest`` names (and so ``--option`` names) whose values are secrets: never recorded, printed or written
SECRET_OPTIONS = frozenset({"token"})
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# A shorter "secret" is no real token, and replacing it everywhere would garble the text (pattern matches still apply)
MIN_SECRET_LENGTH = 8
# Options whose value is kept as typed in a public command (Hub ids, regexes, names), not read as a path
KEEP_VALUE_OPTIONS = frozenset({"--exclude", "--push-to-hub", "--repo-id", "--method", "--task"})

# hf_… (user access tokens) and api_… (old API tokens): 34 letters after the prefix; 30 or more letters and digits
# are taken for one, while names such as hf_tsv_version or ns/hf_clip_vit_b32 (shorter runs) stay readable
_TOKEN_LIKE = re.compile(r"(?<![A-Za-z0-9])(?:hf|api)_[A-Za-z0-9]{30,}")
_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[^\s'\",;)\]}\\]+")
# a URL (kept), or an absolute local path: /a/b, ~/b, C:\\a\\b or \\\\server\\b (reduced to its last component)
_URL_OR_PATH = re.compile(
    r"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+)"
    r"|(?<![\w.~/\\<-])(?P<path>~?/+(?:[^\s/'\"`<>|]+/+)*(?P<last>[^\s/'\"`<>|]*))"
    r"|(?<![\w.~/\\<-])(?P<winpath>(?:[A-Za-z]:[\\/]|\\\\)[\\/]*(?:[^\s/\\'\"`<>|]+[\\/]+)*(?P<winlast>[^\s/\\'\"`<>|]*))"
)


# ----------------------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------------------


def normalize_token(token: Any, source: str = "the token") -> str | bool | None:
    """The token to use: ``None``/``True``/``False`` unchanged, a string with surrounding whitespace stripped.

    Raises:
        TokenError: the token is empty, not a string, or has whitespace, control or non-ASCII characters inside
            it (the message names ``source`` and never contains the token).
    """
    if token is None or isinstance(token, bool):
        return token
    if not isinstance(token, str):
        raise TokenError(f"{source} must be a string, not {type(token).__name__}")
    stripped = token.strip()
    if not stripped:
        raise TokenError(f"{source} is empty; pass a Hugging Face token (hf_…), or leave it out to use HF_TOKEN "
                         "or the stored login")
    if not all(33 <= ord(ch) <= 126 for ch in stripped):
        raise TokenError(f"{source} has whitespace, control or non-ASCII characters inside it (it is not shown "
                         "here); pass the token alone, as copied from huggingface.co/settings/tokens")
    return stripped


def resolve_token(token: Any) -> str | bool | None:
    """:func:`normalize_token`, and with no token given, a check of the ``HF_TOKEN`` environment variables that
    huggingface_hub will read (it strips them itself, but would silently drop a newline *inside* one).

    Returns the token to pass to huggingface_hub (``None``: let it find ``HF_TOKEN`` or the stored login).
    """
    token = normalize_token(token)
    if token is None:
        for name in TOKEN_ENV_VARS:
            raw = os.environ.get(name)
            if raw is not None and raw.strip():
                normalize_token(raw, source=name)
    return token


def known_secrets(token: Any = None) -> list[str]:
    """Every token string this process could send: ``token`` (if a string), the ``HF_TOKEN`` environment
    variables and the stored login. Never raises."""
    found = [token] if isinstance(token, str) else []
    found += [os.environ[name] for name in TOKEN_ENV_VARS if os.environ.get(name)]
    try:
        from huggingface_hub import get_token

        stored = get_token()
    except Exception:  # noqa: BLE001 - only used to scrub text
        stored = None
    if stored:
        found.append(stored)
    return found


def _secret_strings(secrets: Iterable[str] | None) -> list[str]:
    values = known_secrets() if secrets is None else list(secrets)
    unique = {s.strip() for s in values if isinstance(s, str)} | {s for s in values if isinstance(s, str)}
    return sorted((s for s in unique if len(s.strip()) >= MIN_SECRET_LENGTH), key=len, reverse=True)


# ----------------------------------------------------------------------------------------------------------------
# Redaction
# ----------------------------------------------------------------------------------------------------------------


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every secret replaced by ``***``: the strings in ``secrets`` (default:
    :func:`known_secrets`) and anything shaped like a Hub token (``hf_…``, ``api_…``, ``Bearer …``)."""
    text = str(text)
    for secret in _secret_strings(secrets):
        text = text.replace(secret, REDACTED)
    text = _TOKEN_LIKE.sub(REDACTED, text)
    return _BEARER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def redact_json(data: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of JSON-like ``data`` with :func:`redact` applied to every string (keys included)."""
    strings = _secret_strings(secrets)
    return _map_strings(data, lambda text, key=None: redact(text, strings))


def contains_secret(text: str, secrets: Iterable[str] | None = None) -> bool:
    """Whether :func:`redact` would change ``text``."""
    return redact(text, secrets) != str(text)


def safe_cause(exc: BaseException, secrets: Iterable[str] | None = None) -> BaseException | None:
    """``exc`` if neither it nor anything chained to it shows a secret, else ``None``: for ``raise X from
    safe_cause(exc)``, so that a traceback never prints a token that an underlying library put in its message."""
    strings = _secret_strings(secrets)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if contains_secret(f"{current!s} {current!r}", strings):
            return None
        current = current.__cause__ or current.__context__
    return exc


def describe_exception(exc: BaseException, secrets: Iterable[str] | None = None) -> str:
    """``"TypeName: message"`` of ``exc``, redacted and on one line."""
    return " ".join(redact(f"{type(exc).__name__}: {exc}", secrets).split())


# ----------------------------------------------------------------------------------------------------------------
# What is made public
# ----------------------------------------------------------------------------------------------------------------


def path_name(text: str) -> str:
    """The last component of a path (``/a/b/`` → ``b``), as a local input is named in anything public."""
    parts = [p for p in re.split(r"[\\/]+", text) if p]
    return parts[-1] if parts else text


def _public_path_or_url(match: re.Match) -> str:
    if match.group("url"):
        return match.group("url")
    path, last = (match.group("path"), match.group("last")) if match.group("path") else (
        match.group("winpath"), match.group("winlast"))
    return last or path


def public_text(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` as it may be shown to anyone: :func:`redact`, and every absolute local path (``/a/b/c``,
    ``~/c``, ``C:\\a\\c``) reduced to its last component; URLs are kept."""
    return _URL_OR_PATH.sub(_public_path_or_url, redact(text, secrets))


def _is_secret_option(option: str) -> bool:
    """``--token`` and, in a command typed by hand, any abbreviation argparse would have expanded to it."""
    name = option.lstrip("-")
    return option.startswith("--") and any(len(name) >= 2 and secret.startswith(name) for secret in SECRET_OPTIONS)


def _public_arg(arg: str, hub_ids: set[str]) -> str:
    if arg.startswith("-") or arg.partition("@")[0] in hub_ids:
        return arg
    if "/" in arg or "\\" in arg or arg.startswith("~"):
        return path_name(arg)
    return arg


def public_command(command: str, hub_ids: Iterable[str] = (), secrets: Iterable[str] | None = None) -> str:
    """A recorded command as it may be published: the value of every secret option (``--token``, also as an
    abbreviation) replaced by ``***``, every local path reduced to its last component (Hub ids in ``hub_ids``
    are kept), and then :func:`redact`.

    Example:
        >>> public_command("hf-tsv merge /home/me/base me/ft -o /tmp/out", {"me/ft"})
        'hf-tsv merge base me/ft -o out'
    """
    hub_ids = set(hub_ids)
    try:
        parts = shlex.split(redact(command, secrets))
    except ValueError:
        return "(the recorded command could not be parsed, so it is not shown)"
    out: list[str] = []
    previous = ""
    for part in parts:
        if _is_secret_option(previous) and "=" not in previous:
            out.append(REDACTED)
        elif previous in KEEP_VALUE_OPTIONS:
            out.append(part)
        elif part.startswith("--") and "=" in part:
            option, _, value = part.partition("=")
            if _is_secret_option(option):
                value = REDACTED
            elif option not in KEEP_VALUE_OPTIONS:
                value = _public_arg(value, hub_ids)
            out.append(f"{option}={value}")
        elif part.startswith("-") and not part.startswith("--") and len(part) > 2:  # -o=PATH or -oPATH
            option, value = part[:2], part[2:]
            sep = "=" if value.startswith("=") else ""
            out.append(option + sep + _public_arg(value[len(sep):], hub_ids))
        else:
            out.append(_public_arg(part, hub_ids))
        previous = part
    return shlex.join(out)


def _hub_ids_in(data: Any) -> set[str]:
    """Every ``"repo_id"`` string anywhere in JSON-like ``data`` (the Hub inputs of a report or an index)."""
    if isinstance(data, dict):
        found = {data["repo_id"]} if isinstance(data.get("repo_id"), str) else set()
        for value in data.values():
            found |= _hub_ids_in(value)
        return found
    if isinstance(data, list):
        return set().union(*map(_hub_ids_in, data)) if data else set()
    return set()


def _map_strings(data: Any, change, key: str | None = None) -> Any:
    if isinstance(data, str):
        return change(data, key)
    if isinstance(data, dict):
        return {(change(k) if isinstance(k, str) else k): _map_strings(v, change, k) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_map_strings(v, change, key) for v in data]
    return data


def public_json(data: Any, hub_ids: Iterable[str] = (), secrets: Iterable[str] | None = None) -> Any:
    """A copy of JSON-like ``data`` as it may be published: every string (keys included) through
    :func:`public_text`, and a ``"command"`` string through :func:`public_command` (keeping the Hub ids named
    by ``"repo_id"`` fields in ``data`` and ``hub_ids``). Publishing the same data twice changes nothing more."""
    strings = _secret_strings(secrets)
    ids = set(hub_ids) | _hub_ids_in(data)

    def change(text: str, key: str | None = None) -> str:
        return public_command(text, ids, strings) if key == "command" else public_text(text, strings)

    return _map_strings(data, change)
