"""Every JSON file hf_tsv writes goes through :func:`dumps_json` (files through
:func:`hf_tsv.io.output.write_json`, pushed copies directly): strict JSON only (``NaN`` and ``Infinity`` are not
JSON, and many readers reject them), with the place of a non-finite number named in the error."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import MergeInputError


def _first_non_finite(data: Any, path: str = "") -> tuple[str, float] | None:
    """Where the first NaN/inf in ``data`` is (``sti.keys['x']``) and its value, or None."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "the value", data
    if isinstance(data, dict):
        items = ((f"{path}.{k}" if path and isinstance(k, str) and k.isidentifier()
                  else f"{path}[{k!r}]" if path else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for where, value in items:
        found = _first_non_finite(value, where)
        if found:
            return found
    return None


def dumps_json(data: Any, what: str = "JSON", *, indent: int | None = 2, **kwargs: Any) -> str:
    """``data`` as strict JSON text (a trailing newline when indented); a NaN or inf raises
    :class:`~hf_tsv.errors.MergeInputError` naming ``what`` and where the value is.

    Example:
        >>> dumps_json({"alpha": 1.0}, indent=None)
        '{"alpha": 1.0}'
        >>> dumps_json({"sti": {"total": float("nan")}}, "merge_report.json")
        Traceback (most recent call last):
        ...
        hf_tsv.errors.MergeInputError: cannot write merge_report.json: sti.total is nan, and JSON has no NaN or \
infinity; a non-finite number reached the output (check the inputs and options)
    """
    try:
        text = json.dumps(data, indent=indent, allow_nan=False, **kwargs)
    except ValueError:
        found = _first_non_finite(data)
        if found is None:
            raise
        where, value = found
        raise MergeInputError(f"cannot write {what}: {where} is {value}, and JSON has no NaN or infinity; a "
                              "non-finite number reached the output (check the inputs and options)") from None
    return text + "\n" if indent is not None else text
