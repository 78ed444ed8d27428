"""The process side of tests/test_distributed.py: each spawned process joins a gloo group and runs the same list
of scenarios (merges, STI, TSV-C, α searches, the CLI, failures) through the public API, writing what it saw to a
JSON file per scenario and rank for the test to compare with a single-process run."""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import traceback
from datetime import timedelta
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free a moment ago on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fail_on_rank(rank: int, how: str):
    """Make ``rank``'s engine fail after its first unit: raise (``"raise"``) or die at once (``"exit"``)."""
    merge_module = importlib.import_module("hf_tsv.merge")  # hf_tsv.merge is also the function

    real = merge_module.iter_units

    def failing(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 1 and int(os.environ["RANK"]) == rank:
                if how == "exit":
                    os._exit(3)
                raise RuntimeError("injected failure")
            yield item

    merge_module.iter_units = failing
    return lambda: setattr(merge_module, "iter_units", real)


def _fail_evaluation_on_rank(rank: int):
    """Make ``rank``'s validation scoring of the α search raise (the other processes score normally)."""
    alpha_module = importlib.import_module("hf_tsv.evaluation.alpha")
    real = alpha_module.evaluate_model

    def failing(*args, **kwargs):
        if int(os.environ["RANK"]) == rank:
            raise RuntimeError("injected evaluation failure")
        return real(*args, **kwargs)

    alpha_module.evaluate_model = failing
    return lambda: setattr(alpha_module, "evaluate_model", real)


def _alpha_search(kwargs: dict) -> dict:
    from hf_tsv.evaluation import load_tasks_spec
    from hf_tsv.evaluation.select import merge_with_alpha_search

    config = load_tasks_spec(kwargs.pop("spec"))
    result, search, test = merge_with_alpha_search(kwargs.pop("base"), kwargs.pop("models"), config, **kwargs)
    return {"alpha": result.report.alpha, "search": search and search.to_dict(), "test": test.to_dict()}


def _run(scenario: dict) -> dict:
    import hf_tsv

    kind, kwargs = scenario["kind"], dict(scenario.get("kwargs", {}))
    kwargs.update(scenario.get("rank1_kwargs", {}) if os.environ["RANK"] == "1" else {})
    if kind == "alpha_search":
        return _alpha_search(kwargs)
    if kind == "cli":  # hf_tsv.cli.main leaves the group it did not start
        from hf_tsv.cli import main

        return {"code": main(scenario["argv"])}
    if kind == "merge":
        result = hf_tsv.merge(**kwargs)
        return {"sti_total": result.report.sti.total if result.report.sti else None}
    if kind == "merge_push":  # every process pushes, as it merged: the main process alone reaches the Hub
        url = hf_tsv.merge(**kwargs).push_to_hub(scenario["repo_id"])
        return {"url": str(url), "files": list(url.files)}
    if kind == "merge_memory":
        result = hf_tsv.merge(**kwargs)
        state = result.state_dict()
        return {"keys": list(state), "sums": [float(t.double().sum()) for t in state.values()]}
    if kind == "sti":
        report = hf_tsv.sti(**kwargs)
        return {"keys": report.keys, "total": report.total}
    if kind == "compare":
        hf_tsv.compare(**kwargs)
        return {}
    if kind == "compress":
        hf_tsv.compress(**kwargs)
        return {}
    raise AssertionError(kind)


def worker(rank: int, world_size: int, port: int, scenarios: list[dict], out: str, timeout_s: float = 60.0,
           env: dict[str, str] | None = None) -> None:
    """One process of the group: run every scenario, writing ``{name}.rank{rank}.json`` with its result or error,
    and everything it writes to stderr (file descriptor 2: Python's and C's) to ``stderr.rank{rank}.txt``.
    ``env``: more environment variables (e.g. the loopback Hub's), set before anything is imported."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      HF_HUB_OFFLINE="1")
    os.environ.update(env or {})
    with open(Path(out, f"stderr.rank{rank}.txt"), "wb") as captured:
        os.dup2(captured.fileno(), 2)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    try:
        for scenario in scenarios:
            restore = _fail_on_rank(*scenario["fail"]) if scenario.get("fail") else None
            if scenario.get("fail_evaluation") is not None:
                restore = _fail_evaluation_on_rank(scenario["fail_evaluation"])
            try:
                record = {"ok": True, **_run(scenario)}
            except Exception as exc:  # the test checks which error each process raised
                record = {"ok": False, "type": type(exc).__name__, "message": str(exc),
                          "traceback": traceback.format_exc()}
            finally:
                if restore:
                    restore()
            Path(out, f"{scenario['name']}.rank{rank}.json").write_text(json.dumps(record))
    finally:
        from hf_tsv.distributed import shut_down

        shut_down()
    # Every scenario ran and the group is stopped: end here, as `python -m hf_tsv` does under torchrun. Python's
    # exit could abort the process (a gloo thread freeing the last collective's tensors while the interpreter is
    # finalised: see hf_tsv.cli.run_as_program), which the test would take for a failure.
    sys.stderr.flush()
    os._exit(0)


def run_group(scenarios: list[dict], out: Path, world_size: int = 2, timeout_s: float = 60.0,
              join_s: float = 300.0, env: dict[str, str] | None = None) -> list[int | None]:
    """Spawn ``world_size`` processes running :func:`worker` (with ``env`` added to their environment); return their
    exit codes (None: still running after ``join_s``, then killed)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=worker, args=(rank, world_size, port, scenarios, str(out), timeout_s, env))
                 for rank in range(world_size)]
    for p in processes:
        p.start()
    codes = []
    for p in processes:
        p.join(join_s)
        if p.is_alive():
            p.kill()
            p.join()
            codes.append(None)
        else:
            codes.append(p.exitcode)
    return codes
