"""Progress bars: tqdm's, drawn by the main process only. The other processes of a sharded run (torchrun, a process
group) draw none, so the terminal shows one bar per step, not one per process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


def progress_bar(iterable: Iterable | None = None, *, show: bool = True, **tqdm_options):
    """``tqdm.auto.tqdm(iterable, **tqdm_options)``, disabled when ``show`` is False or this is not the main process
    (:func:`hf_tsv.distributed.is_main_process`). Otherwise ``disable`` is left to tqdm, so ``TQDM_DISABLE=1`` (read
    when tqdm is imported) still hides it. ``tqdm.auto.tqdm`` is looked up at each call: a program that replaced it
    (the Space relays bars) gets its own class.

    Example:
        >>> for unit in progress_bar(["a", "b"], desc="merging", leave=False):  # doctest: +SKIP
        ...     pass
    """
    import tqdm.auto

    from .distributed import is_main_process

    if not show or not is_main_process():
        tqdm_options["disable"] = True
    return tqdm.auto.tqdm(iterable, **tqdm_options)


@contextlib.contextmanager
def library_bars_off_main() -> Iterator[None]:
    """On a process other than the main one, hide the bars of transformers (``Loading weights``) and huggingface_hub
    (downloads) for the block, and restore their setting after; on the main process, leave them as they are.

    Example:
        >>> with library_bars_off_main():  # doctest: +SKIP
        ...     model = CLIPVisionModel.from_pretrained(folder)
    """
    from .distributed import is_main_process

    if is_main_process():
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as transformers_logging

    transformers_on, hub_off = transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # both libraries' (transformers turns huggingface_hub's off too)
    try:
        yield
    finally:
        if transformers_on:
            transformers_logging.enable_progress_bar()
        if hub_off:
            disable_progress_bars()
