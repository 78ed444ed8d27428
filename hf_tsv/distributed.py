"""Merges sharded over processes with torch.distributed: who merges which unit, and how the processes agree.

When a default process group is initialised with more than one process (``torchrun --nproc-per-node N -m hf_tsv
merge …``, or a program that called ``torch.distributed.init_process_group``), :func:`hf_tsv.merge`,
:func:`hf_tsv.merge_linear`, :func:`hf_tsv.sti` and :func:`hf_tsv.compress` split the plan's units over the
processes (:func:`assign_units`: longest processing time first, by :func:`hf_tsv.estimate.unit_cost`). Every
unit is merged by exactly the code a single process runs, so the output's bytes are those of a single-process
merge run with the same number of torch threads per process.

Failures: each step ends with :meth:`Shards.step`, where the processes exchange their status; when one failed,
every process raises (its own error, or :class:`~hf_tsv.errors.DistributedMergeError` naming the failed process)
and the main process removes the scratch output. A process that dies or hangs makes the others' next collective
fail (a closed connection, or the process group's timeout). See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .errors import DistributedMergeError, MergeInputError

NO_OUTPUT = "no output was written"  # what a failed step of a sharded merge leaves, as its message ends
DEFAULT_TIMEOUT_S = 1800.0  # of the process group the CLI starts: how long a process waits for a silent peer


def _one_line(error: BaseException) -> str:
    from .errors import HFTSVError

    text = (str(error).strip().splitlines() or [""])[0]
    return text if isinstance(error, HFTSVError) else f"{type(error).__name__}: {text}".rstrip(": ")


@dataclass(frozen=True)
class Shards:
    """This process's place in a sharded merge: its ``rank`` among ``world_size`` processes of ``backend``."""

    rank: int
    world_size: int
    backend: str

    @property
    def is_main(self) -> bool:
        """The process that writes the header, config, report and card, and renames the output into place."""
        return self.rank == 0

    def describe(self) -> str:
        """``"2 processes (gloo)"``, as the report's device field ends."""
        return f"{self.world_size} processes ({self.backend})"

    # -- collectives (each one is called by every process, in the same order) -------------------------------------

    def gather(self, value: object) -> list:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        import torch.distributed as dist

        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: object) -> object:
        """The main process's ``value`` on every process."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce(self, tensor) -> None:
        """Sum ``tensor`` in place over the processes (the model pass of TIES: integer counts)."""
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def agree(self, error: BaseException | None, what: str, outcome: str | None = NO_OUTPUT) -> None:
        """Exchange every process's status after the step ``what``; raise on every process when one failed: this
        process's own error, or :class:`DistributedMergeError` naming the first process that failed (its message
        ends with ``outcome``, what the failure left, when given)."""
        ending = f"; {outcome}" if outcome else ""
        try:
            statuses = self.gather(None if error is None else _one_line(error))
        except Exception as exc:  # a peer died (closed connection) or stayed silent past the timeout
            raise DistributedMergeError(
                f"process {self.rank} of {self.world_size}: another process stopped or timed out {what} "
                f"({_one_line(exc)}){ending}") from (error or exc)
        if error is not None:
            raise error
        failed = [(rank, message) for rank, message in enumerate(statuses) if message is not None]
        if failed:
            rank, message = failed[0]
            raise DistributedMergeError(f"process {rank} of {self.world_size} failed {what}: {message}{ending}")

    def check_same(self, plan: object, what: str = "merge") -> None:
        """Refuse, on every process, a sharded ``what`` whose processes planned differently (``plan``: what fixes
        the output, e.g. its layout and options; compared by its ``repr``): they were given different inputs
        or options, and their shares would not fit together."""
        import hashlib

        digests = self.gather(hashlib.sha256(repr(plan).encode()).hexdigest())
        odd = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if odd:
            raise MergeInputError(f"process {odd[0]} of {self.world_size} planned a different {what} than process 0 "
                                  "(other inputs or options); start every process with the same command or "
                                  "arguments")

    @contextlib.contextmanager
    def step(self, what: str, outcome: str | None = NO_OUTPUT) -> Iterator[None]:
        """Run the block, then :meth:`agree`: an exception in the block (``Exception``, not Ctrl+C) waits for the
        others and is raised on every process together (``outcome``: what a failure leaves, as :meth:`agree`).

        Example:
            >>> with shards.step("merging"):  # doctest: +SKIP
            ...     write_my_units()
        """
        error = None
        try:
            yield
        except Exception as exc:
            error = exc
        self.agree(error, what, outcome)


def options_fixing_output(options) -> dict:
    """The fields of a :class:`~hf_tsv.options.MergeOptions` that every process of a sharded merge must share:
    all but the device (each process may have its own GPU)."""
    import dataclasses

    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "device"}


def current_shards() -> Shards | None:
    """The sharded merge this process takes part in: the default process group when torch.distributed is
    initialised with more than one process, else None (a single-process merge)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Shards(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def launched_world_size() -> int:
    """How many processes ``torchrun`` started (its ``WORLD_SIZE``; 1 without torchrun), whether or not a process
    group exists yet."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process is the one that speaks for a sharded run (draws progress bars): rank 0 of the process
    group, or of the processes torchrun started (``RANK``) before a group exists; True in a single process.

    Example:
        >>> is_main_process()  # not under torchrun  # doctest: +SKIP
        True
    """
    shards = current_shards()
    if shards is not None:
        return shards.is_main
    return launched_world_size() < 2 or os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def step(shards: Shards | None, what: str) -> Iterator[None]:
    """:meth:`Shards.step`, or nothing in a single process."""
    if shards is None:
        yield
    else:
        with shards.step(what):
            yield


def on_main(shards: Shards | None, what: str, action: Callable[[], object], outcome: str | None = None) -> object:
    """``action()`` run by the main process alone, once every process got here (they wait for it), its result
    given to every process; a failure raises on every process (:meth:`Shards.step`). For what must happen once,
    such as a push to the Hub; in a single process, just ``action()``.

    Example:
        >>> on_main(None, "while pushing to the Hub", lambda: "pushed")
        'pushed'
    """
    if shards is None:
        return action()
    result = None
    with shards.step(what, outcome):
        if shards.is_main:
            result = action()
    return shards.broadcast(result)


def assign_units(costs: Sequence[float], world_size: int) -> list[int]:
    """The process that merges each unit: longest processing time first (each unit, costliest first, goes to the
    least loaded process; ties to the lowest rank), so the busiest process ends within 4/3 of the best split.
    Deterministic: every process computes the same assignment.

    Example:
        >>> assign_units([4.0, 1.0, 1.0, 1.0, 1.0], 2)
        [0, 1, 1, 1, 1]
    """
    loads = [0.0] * world_size
    owner = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        owner[index] = rank
        loads[rank] += costs[index]
    return owner


def shard_units(units: list, shards: Shards | None, num_tasks: int, uses_svd: bool) -> list:
    """This process's share of ``units`` (:class:`~hf_tsv.engine.Unit`), in the plan's order; all of them in a
    single process."""
    from .estimate import unit_cost

    if shards is None:
        return list(units)
    owner = assign_units([unit_cost(u.shape, u.is_matrix, num_tasks, uses_svd) for u in units], shards.world_size)
    return [u for u, rank in zip(units, owner) if rank == shards.rank]


def my_share(costs: Sequence[float], shards: Shards | None) -> list[int]:
    """The indices of the items (of cost ``costs``) this process handles, in order: split as units are
    (:func:`assign_units`); every index in a single process. Items of equal cost go round robin.

    Example:
        >>> my_share([1.0, 1.0, 1.0], Shards(1, 2, "gloo"))
        [1]
        >>> my_share([1.0, 1.0], None)
        [0, 1]
    """
    if shards is None:
        return list(range(len(costs)))
    owner = assign_units(costs, shards.world_size)
    return [index for index, rank in enumerate(owner) if rank == shards.rank]


def gather_in_order(shards: Shards | None, part: dict, order: Sequence) -> dict:
    """Every process's ``part`` (a dict; together they hold every key of ``order``) merged, on every process,
    with its keys in ``order`` (a collective in a sharded run; ``part`` reordered in a single process).

    Example:
        >>> gather_in_order(None, {"b": 2, "a": 1}, ["a", "b"])
        {'a': 1, 'b': 2}
    """
    merged = part if shards is None else {k: v for piece in shards.gather(part) for k, v in piece.items()}
    return {key: merged[key] for key in order}


def init_from_environment(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Start the default process group when this process was launched by ``torchrun`` with more than one process
    (``WORLD_SIZE`` > 1) and none is started yet: NCCL with one GPU per process (``LOCAL_RANK``) when ``device``
    asks for CUDA (``auto`` with CUDA present), else gloo. Returns the device this process should merge on (a
    CUDA device becomes ``cuda:LOCAL_RANK``), or None when no group was started here.

    Example:
        >>> init_from_environment() is None  # not launched by torchrun  # doctest: +SKIP
        True
    """
    import torch
    import torch.distributed as dist

    if launched_world_size() < 2 or not dist.is_available() or dist.is_initialized():
        return None
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if wants_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return device


def shut_down() -> None:
    """Destroy the default process group if one is started (at the end of a torchrun command)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    # Every process meets at a barrier, the others destroy their group and say so through the store (kept alive
    # for that), and process 0 waits for them before destroying its own, so that no process sees a peer's
    # connections close while it still uses its own. This does not make the interpreter's exit safe: a gloo worker
    # thread may still be freeing the last collective's tensors, which takes the GIL, while the main thread
    # finalises Python; the thread is then ended inside a C++ destructor and the process aborts ("terminate called
    # without an active exception"). The hf-tsv program therefore ends with os._exit (cli.run_as_program).
    from torch.distributed import distributed_c10d

    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        store = distributed_c10d._get_default_store()
        dist.barrier()
    except Exception:  # a peer already failed (its error was reported): just tear down
        dist.destroy_process_group()
        return
    if rank != 0:
        dist.destroy_process_group()
        store.set(f"hf_tsv/shut_down/{rank}", "1")
        return
    try:
        store.wait([f"hf_tsv/shut_down/{r}" for r in range(1, world)], timedelta(seconds=30))
    except Exception:  # a peer died after the barrier: nothing left to wait for
        pass
    dist.destroy_process_group()


def write_sharded(shards: Shards, output_dir, overwrite: bool, inputs, layout: dict, max_shard_size,
                  file_stem: str, keys: list[str], write_units: Callable[[Callable], None],
                  after_units: Callable[[], None], write_rest: Callable[[Path], None]) -> None:
    """Write one output folder from every process of a sharded merge. The main process makes the scratch folder
    (:func:`~hf_tsv.io.output.atomic_output_dir`) and pre-sizes every safetensors file with its header (the layout
    fixes every tensor's offset); every process then writes its ``keys`` with ``write_units(write)`` at their
    offsets; ``after_units()`` runs on every process once all tensors are written (it may gather, e.g. STI); the
    main process writes the rest (``write_rest(folder)``: config, report...) and renames the folder into place.
    A failure anywhere raises on every process and leaves no output.
    """
    from .io.writer import ShardedSafetensorsWriter, atomic_output_dir

    with contextlib.ExitStack() as stack:
        folder = writer = None
        with shards.step("while preparing the output folder"):
            if shards.is_main:
                folder = stack.enter_context(atomic_output_dir(output_dir, overwrite, inputs=inputs))
                writer = ShardedSafetensorsWriter(folder, layout, max_shard_size, file_stem, keys=keys)
        folder = shards.broadcast(folder)
        with shards.step("while merging"):
            if writer is None:
                writer = ShardedSafetensorsWriter(folder, layout, max_shard_size, file_stem, create=False, keys=keys)
            write_units(writer.write)
            writer.close()
        with shards.step("while finishing the output"):
            after_units()
            if shards.is_main:
                write_rest(folder)
                stack.close()  # the complete folder is renamed into place
