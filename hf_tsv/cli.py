"""The ``hf-tsv`` command line: parse, call the public API, print. Every bad input exits non-zero with a
one-line reason.

Parsing imports nothing heavy (``hf-tsv --help`` does not load torch): each command imports what it runs, and
the choices that come from torch-backed modules (the merge methods, the SVD modes) are read when an option is
checked or its help is shown.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from .allocator import tune_for_merging
from .distributed import is_main_process, launched_world_size
from .secrets import REDACTED, SECRET_OPTIONS, known_secrets, redact


def default_threads() -> int:
    """Half the CPUs (at least 1). Measured on 2 cores (B/32-width, 2 layers, T=8): 2 threads were only 9% faster
    than 1 on an idle machine (25.5 s vs 27.9 s) but 1.6x slower when the other core was busy (41 s vs 26 s)."""
    return max(1, (os.cpu_count() or 2) // 2)


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that accepts options only as written in full (``--tok`` is not taken for
    ``--token``) and whose error messages never echo a secret: an unknown option is named without its value,
    and every message is redacted. Sub-commands get the same class (``add_subparsers`` uses it)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):  # noqa: D102 - argparse's, with unknown values hidden
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            names = [a.partition("=")[0] for a in unknown if a.startswith("-")]
            hidden = sum(1 for a in unknown if not a.startswith("-") or "=" in a)
            plural = "s" if hidden > 1 else ""
            values = f"{' and ' if names else ''}{hidden} value{plural} (not shown)" if hidden else ""
            self.error(f"unrecognized arguments: {' '.join(names)}{values}; write options in full (abbreviations "
                       "are not accepted) and see --help")
        return parsed

    def error(self, message: str):
        """One line on stderr and exit status 2, like every other refusal (argparse would print the usage block
        first); ``--help`` shows the usage."""
        self.exit(2, f"{self.prog}: error: {redact(message)}\n")


class _Choices(Sequence[str]):
    """An option's choices, read on first use (when the option is checked or its help shown), so that building
    the parser imports nothing heavy. Add the option with :func:`_add_choice_option`."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self._values: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._values is None:
            self._values = tuple(self._load())
        return self._values

    def __getitem__(self, index):
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())


def _svd_modes() -> tuple[str, ...]:
    from .core.svd import SVD_MODES

    return tuple(SVD_MODES)


SVD_CHOICES = _Choices(_svd_modes)


def _add_choice_option(p: argparse.ArgumentParser, flag: str, choices: _Choices, **kwargs) -> argparse.Action:
    """``p.add_argument(flag, choices=choices, ...)`` without reading ``choices`` yet. argparse formats an option
    once as it is added (to check its metavar), which would read them: the option is added with a placeholder
    metavar, then shown as usual (``{a,b,c}``) whenever its help or usage is printed."""
    action = p.add_argument(flag, choices=choices, metavar="-", **kwargs)
    action.metavar = None
    return action


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _alpha_arg(text: str) -> float | str:
    if text == "search":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'search', got {text!r}") from None


def _configure_threads(threads: int | None) -> None:
    """Honour --threads, defaulting to half the CPUs, or to 1 per process when torchrun started several (their
    threads would share the cores; OMP_WAIT_POLICY is set by :func:`main` before this loads torch)."""
    import torch

    torch.set_num_threads(threads or (1 if launched_world_size() > 1 else default_threads()))


# The commands that shard over the processes torchrun starts (docs/distributed.md).
SHARDED_COMMANDS = ("merge", "sti", "compress")


def _unsharded_output(args: argparse.Namespace) -> str | None:
    """What a command that does not shard writes (an output folder, a file, a Hub repository), which every process
    of a torchrun would write at once; None for a sharded command, or one that only reads and prints."""
    writes = {"compare": "the -o folder", "expand": "the -o folder", "example": "the -o folder",
              "card": "the card files in OUT", "push": "the Hub repository", "space": "the Space",
              "bench": "the benchmark cache and results"}
    if args.command in ("eval", "plan") and getattr(args, "json", None):
        return "the --json file"
    return writes.get(args.command)


def _refuse_unsharded_writer(args: argparse.Namespace) -> None:
    """Refuse, before any work, a command that does not shard but writes, when torchrun started several processes:
    each would run it whole and write the same output at the same time (docs/distributed.md)."""
    from .errors import MergeInputError

    target = _unsharded_output(args)
    if launched_world_size() > 1 and target is not None:
        raise MergeInputError(f"{args.command} does not shard over processes: each of the {launched_world_size()} "
                              f"processes torchrun started would run it whole and write {target} at once; run it in "
                              "one process (without torchrun)")


@contextlib.contextmanager
def _process_group(args: argparse.Namespace) -> Iterator[bool]:
    """Under ``torchrun`` with several processes, start the process group for a sharded command (a CUDA device
    becomes this process's own GPU) and yield whether this process is a secondary one, which prints nothing but
    its failure's traceback (the main process prints the result and the one-line error); stop the group after
    when this command started it (``main`` called inside a program's own process group leaves that group be)."""
    if args.command not in SHARDED_COMMANDS or launched_world_size() < 2:
        yield False
        return
    from .distributed import DEFAULT_TIMEOUT_S, init_from_environment, shut_down

    device = init_from_environment(args.device, args.dist_timeout or DEFAULT_TIMEOUT_S)
    if device is not None:
        args.device = device
    secondary = int(os.environ.get("RANK", "0")) != 0
    try:
        with contextlib.redirect_stdout(io.StringIO()) if secondary else contextlib.nullcontext():  # dropped
            yield secondary
    finally:
        if device is not None:  # a group this command started; one a calling program started is left to it
            shut_down()


def _add_inputs(p: argparse.ArgumentParser, what: str = "fine-tuned models") -> None:
    from .adapters import adapter_names

    p.add_argument("base", help="pretrained base: local folder or Hub id (ns/name or ns/name@revision)")
    p.add_argument("models", nargs="+", metavar="MODEL", help=f"{what}: local folders or Hub ids")
    p.add_argument("--revision", help="revision of the base on the Hub (or write BASE@REVISION)")
    p.add_argument("--fuse-qkv", action="store_true",
                   help="stack q/k/v projections into one matrix before the SVD (the paper's open_clip layout)")
    p.add_argument("--exclude", metavar="REGEX",
                   help="matrix keys matching this regex are averaged instead of SVD-merged")
    p.add_argument("--token", help="Hub token for private models (default: HF_TOKEN or the stored login)")
    p.add_argument("--allow-duplicates", action="store_true",
                   help="go on when a model is given twice (same folder, Hub commit or weights) or the base is also "
                   "given as a fine-tuned model (refused by default); the report records a warning")
    p.add_argument("--architecture", metavar="NAME",
                   help="read the models with this adapter instead of the one their config.json chooses: "
                   f"{', '.join(adapter_names())} (e.g. clip-vision: the vision tower alone of CLIPModel checkpoints)")
    p.add_argument("--drop-heads", action="store_true",
                   help="leave task-specific heads (classifier.*) out of the merge instead of refusing them")


def _add_embeddings(p: argparse.ArgumentParser) -> None:
    from .adapters.base import DEFAULT_EMBEDDINGS, EMBEDDING_MODES

    p.add_argument("--embeddings", choices=list(EMBEDDING_MODES),
                   help="decoder LLMs' token embeddings and lm_head: tsv (merged as matrices by the method), average "
                   f"(like the norms) or base (kept from the base) (default {DEFAULT_EMBEDDINGS})")


def _add_compute(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--svd-dtype", default="float32", choices=["float32", "float64"],
                   help="precision of the SVDs, whatever the checkpoint dtype")
    _add_choice_option(p, "--svd", SVD_CHOICES,
                       help="how each task's top-k singular triplets are computed: fast (default; Gram matrix, "
                       "float32 eigendecomposition, Rayleigh-Ritz), exact (float64 eigendecomposition) or lapack "
                       "(a full SVD per task, as the paper's code)")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: half the CPUs, at least 1; "
                   "1 per process under torchrun)")
    p.add_argument("--dist-timeout", type=_positive_float, metavar="SECONDS",
                   help="under torchrun with several processes: how long a process waits for the others before it "
                   "gives up and no output is written (default 1800); see docs/distributed.md")


def _add_card_options(p: argparse.ArgumentParser, repo_id: bool = True) -> None:
    if repo_id:
        p.add_argument("--repo-id", metavar="NS/NAME", help="Hub id to name in the card (default: the folder name)")
    p.add_argument("--license", help="license of the result (default: inherited from the merged models' cards)")
    p.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login); never printed or stored")


def _help(text: str) -> str:
    """Text for argparse's help, which reads ``%`` as a format character."""
    return text.replace("%", "%%")


def _method_help() -> str:
    from .methods import DEFAULT_METHOD, METHODS

    listing = "; ".join(f"{m.name}: {m.description}" for m in METHODS.values())
    return _help(f"merge method (default {DEFAULT_METHOD}). {listing}")


def _per_method(describe) -> str:
    """``"avg ignores α; ta 0.3; …"``: one fact of every method, as help text."""
    from .methods import METHODS

    return _help("; ".join(f"{m.name} {describe(m)}" for m in METHODS.values()))


def _add_method_parameters(p: argparse.ArgumentParser) -> None:
    """A flag for every parameter a method declares (``--ties-density``...), from :data:`hf_tsv.methods.PARAMETERS`;
    left unset (None), a parameter keeps its declared default."""
    from .methods import METHODS, PARAMETERS

    for spec in PARAMETERS.values():
        owners = "/".join(METHODS[name].label for name in spec.methods)
        default = f"{spec.default:g}" if isinstance(spec.default, float) else spec.default
        if spec.choices is not None:  # argparse shows the choices
            kind, accepted = {"choices": list(spec.choices)}, ""
        else:
            kind, accepted = {"type": float}, f"; {spec.accepted()}"
        p.add_argument(spec.flag, dest=spec.name, **kind,
                       help=_help(f"{owners}: {spec.help}{accepted} (default {default})"))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .methods import DEFAULT_METHOD, METHODS, describe_alpha

    parser = _Parser(prog="hf-tsv", description="Task Singular Vectors model merging "
                     "(TSV-M, TSV-C, STI) for Hugging Face CLIP, SigLIP, ViT and DINOv2 checkpoints.")
    parser.add_argument("--version", action="version", version=f"hf-tsv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("merge", help="merge fine-tuned models into one",
                       description="Merge fine-tuned models of one base. Output: a folder that the merged "
                       "architecture's from_pretrained loads (e.g. CLIPVisionModel), with merge_report.json.")
    _add_inputs(p)
    _add_embeddings(p)
    p.add_argument("-o", "--output", help="output folder (written atomically)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=_method_help())
    p.add_argument("--alpha", type=_alpha_arg,
                   help=f"scaling α of the merged delta (default: {_per_method(describe_alpha)}), or 'search': "
                   "choose α on the validation splits of --eval's tasks")
    p.add_argument("--eval", metavar="TASKS_SPEC",
                   help="task spec (JSON/YAML): evaluate the merge on each task's test split and write "
                   "eval_results.json beside it (the card shows it); needed by --alpha search")
    p.add_argument("--alpha-grid", metavar="GRID",
                   help="α values for --alpha search: 0.1,0.5,1 or start:stop:step (default: "
                   f"{_per_method(lambda m: describe_alpha(m, grid=True))})")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="evaluation batch size")
    p.add_argument("--max-examples", type=_positive_int, help="evaluate at most N examples per task and split")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="output dtype (default: the base's)")
    _add_method_parameters(p)
    p.add_argument("--max-shard-size", default="5GB", help="shard the safetensors past this size (e.g. 2GB)")
    p.add_argument("--output-format", choices=["model", "peft"],
                   help="model (default): the full merged model; peft: one LoRA adapter equal to the merge, for "
                   "PeftModel.from_pretrained(base, OUTPUT) (every MODEL a LoRA adapter; methods "
                   f"{', '.join(m.name for m in METHODS.values() if m.writes_adapters)}; see docs/lora.md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    p.add_argument("--dry-run", action="store_true", help="run the preflight only (same as `hf-tsv plan`)")
    p.add_argument("--push-to-hub", metavar="NS/NAME",
                   help="then publish the merge to this Hub repository, with a model card (-o is optional)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    _add_compute(p)

    _add_compare_parser(sub)

    p = sub.add_parser("eval", help="accuracy of a model on tasks with frozen heads",
                       description="Top-1 accuracy (and normalised accuracy, where the spec gives each task's "
                       "fine-tuned accuracy) of a CLIP vision model on every task of a task spec.")
    p.add_argument("model", help="model to evaluate: local folder or Hub id (ns/name or ns/name@revision)")
    p.add_argument("--tasks", required=True, metavar="TASKS_SPEC", help="task spec (JSON or YAML)")
    p.add_argument("--split", default="test", help="'test' (each task's split), 'validation' (its "
                   "validation_split) or a split name")
    p.add_argument("--finetuned", nargs="+", metavar="MODEL",
                   help="fine-tuned models, one per task in spec order: their accuracy normalises the scores")
    p.add_argument("--json", metavar="FILE", help="write the per-task results as JSON")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--max-examples", type=_positive_int, help="evaluate at most N examples per task")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:N]")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: half the CPUs, at least 1)")

    p = sub.add_parser("bench", help="the offline 8-task merging benchmark: build it once, then run it",
                       description="Real data from Debian/PyPI packages, a small CLIP vision encoder pretrained "
                       "against a frozen MiniLM text encoder, one fine-tune per task; every method scored. It runs "
                       "from a source checkout (benchmarks/hf_tsv_bench), not from the installed package.")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="STEP")
    for name, text in (("build", "prepare data, base model, heads and fine-tuned models (cached)"),
                       ("run", "evaluate zero-shot, fine-tuned, every merge method and TSV-C; write results")):
        b = bench.add_parser(name, help=text)
        b.add_argument("--suite", choices=("image", "text"), default="image",
                       help="image (default: a small CLIP vision encoder pretrained here) or text (the real "
                       "pretrained all-MiniLM-L6-v2 on 8 real-text tasks)")
        b.add_argument("--quick", action="store_true", help="a reduced version that runs in a few minutes (CI)")
        b.add_argument("--cache", metavar="DIR", help="benchmark cache (default $HF_TSV_BENCH_CACHE or "
                       "~/.cache/hf_tsv/bench; text: $HF_TSV_BENCH_TEXT_CACHE or ~/.cache/hf_tsv/bench-text)")
        b.add_argument("--threads", type=_positive_int, default=1,
                       help="torch CPU threads (default 1: results and timings do not depend on the machine)")
        seeds = b.add_mutually_exclusive_group()
        seeds.add_argument("--seeds", metavar="LIST", help="several seeds, e.g. 0,1,2: seed 0 in the cache, seed s "
                           "in <cache>-seed<s>; run reports mean ± std per method (docs/benchmark.md)")
        if name == "build":
            seeds.add_argument("--seed", type=int, default=0, help="one build of this seed, in the cache itself")
            b.add_argument("--force", action="store_true", help="rebuild even if an identical build is cached")
        else:
            b.add_argument("--out", metavar="DIR", help="where results.json, results.md and the plots go "
                           "(default: <cache>/{full,quick}/results; with --seeds <cache>/{full,quick}/results-seeds, "
                           "each seed in seed<s>/)")

    p = sub.add_parser("sti", help="Singular Task Interference per layer, without merging")
    _add_inputs(p)
    _add_embeddings(p)
    p.add_argument("--json", metavar="FILE", help='write {"k", "keys", "total"} to FILE')
    _add_compute(p)

    p = sub.add_parser("compress", help="TSV-C: store each task's top singular triplets")
    _add_inputs(p, "fine-tuned models (tasks)")
    p.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    p.add_argument("--rank-fraction", type=float,
                   help="keep floor(F*r) triplets per task and key (default: k = floor(r/T))")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the stored factors (default float32)")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true")
    _add_compute(p)

    p = sub.add_parser("expand", help="rebuild one task's full checkpoint from a TSV-C folder")
    p.add_argument("compressed", help="folder written by `hf-tsv compress`")
    p.add_argument("--task", required=True, help="task name as listed in tsv_c.json (names are matched first), or "
                   "its index written N or #N (read as an index only when no task has that name)")
    p.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    p.add_argument("--base", help="the base checkpoint, if not where compression found it")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--token")

    p = sub.add_parser("card", help="write (or refresh) the model card README.md of an output folder",
                       description="Write OUT/README.md (+ sti_heatmap.png and sti_stats.json for a TSV-M merge) "
                       "from the files in OUT, without pushing, and print the card.")
    p.add_argument("folder", metavar="OUT", help="output folder of `hf-tsv merge`, `compress` or `expand`")
    _add_card_options(p)

    p = sub.add_parser("push", help="publish an output folder to the Hugging Face Hub in one commit",
                       description="Regenerate the model card and upload weights, config, card, reports, STI "
                       "heatmap and evaluation files in one commit. Prints the commit (or pull request) URL.")
    p.add_argument("folder", metavar="OUT", help="output folder of `hf-tsv merge`, `compress` or `expand`")
    p.add_argument("--repo-id", required=True, metavar="NS/NAME", help="Hub repository (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repository private (an existing one "
                   "keeps its visibility)")
    p.add_argument("--revision", metavar="BRANCH", help="commit to this branch (created from main when missing)")
    p.add_argument("--create-pr", action="store_true", help="open the commit as a pull request")
    p.add_argument("--commit-message", help="commit message (default: what was merged, with the hf-tsv version)")
    _add_card_options(p, repo_id=False)

    p = sub.add_parser("space", help="the hf-tsv Gradio Space: deploy it to the Hub",
                       description="Runs from a source checkout of hf-tsv (spaces_app/ beside the package).")
    space = p.add_subparsers(dest="space_command", required=True, metavar="STEP")
    d = space.add_parser("deploy", help="create or update a Space with the app, in one commit",
                         description="Create (or update) a Gradio Space with spaces_app's app, its README and a "
                         "requirements.txt that installs a wheel of this checkout shipped in the same commit. "
                         "Prints the commit URL.")
    d.add_argument("space_id", metavar="SPACE_ID", help="namespace/name of the Space (created when missing)")
    d.add_argument("--private", action="store_true", help="create the Space private (an existing one keeps its "
                   "visibility)")
    d.add_argument("--hardware", default="cpu-basic", help="Space hardware: cpu-basic (default), cpu-upgrade, "
                   "t4-small, ...; sets the torch line (CPU wheels on cpu-*) and the README's suggested_hardware")
    d.add_argument("--model-library", metavar="DIR", help="a folder of checkpoint sub-folders, shipped in the "
                   "Space and offered by name (HF_TSV_MODEL_LIBRARY)")
    d.add_argument("--tasks", metavar="SPEC", help="a task spec (JSON/YAML) of hf_tsv.evaluation, shipped in the "
                   "Space to enable evaluation (HF_TSV_SPACE_TASKS)")
    d.add_argument("--commit-message", help="commit message (default: 'Deploy the hf-tsv Space' with the version)")
    d.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login); never printed or stored")

    p = sub.add_parser("plan", help="preflight only: key counts, memory and time estimates")
    _add_inputs(p)
    _add_embeddings(p)
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS), help=_method_help())
    _add_choice_option(p, "--svd", SVD_CHOICES, help="as for merge")
    p.add_argument("--threads", type=_positive_int,
                   help="torch CPU threads for the timing probe (default: half the CPUs)")
    p.add_argument("--json", metavar="FILE", help="also write the plan as JSON")

    p = sub.add_parser("example", help="merge tiny generated checkpoints and print the STI summary")
    p.add_argument("-o", "--output", default="example-output", help="working folder (default ./example-output)")
    p.add_argument("--num-tasks", type=int, default=4)
    p.add_argument("--preset", default="tiny", help="synthetic model size: tiny, small, vit-b-32, vit-l-14")
    return parser


def _print_plan(info: dict) -> None:
    print(f"plan: {info['method']} over {info['num_tasks']} models, output {info['output_class']}")
    for name, count in info["keys"].items():
        print(f"  {name:>18}: {count}")
    for note in info["notes"]:
        print(f"  note: {note}")
    print(f"  model size: {info['model_bytes'] / 2**20:.1f} MiB; estimated peak memory "
          f"{info['estimated_peak_memory_bytes'] / 2**20:.0f} MiB; estimated time {info['estimated_seconds']:.1f} s")
    _print_warnings(info.get("warnings", []))


def _print_warnings(warnings: list[str]) -> None:
    """Each warning on stderr, once: in a sharded run only the main process prints (every process holds them)."""
    if not is_main_process():
        return
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


# Command-line destinations of the merge options, and the Python API's name where it differs
_OPTION_DESTS = ("method", "fuse_qkv", "exclude", "device", "dtype", "svd_dtype", "svd", "allow_duplicates",
                 "architecture", "drop_heads", "output_format", "embeddings")
_API_NAMES = {"svd_dtype": "compute_dtype"}


def _option_arguments(args: argparse.Namespace) -> dict:
    """The merge options on the command line as the Python API names them (those a command lacks, or left
    unset, keep the API's defaults); :class:`hf_tsv.options.MergeOptions` checks them all."""
    from .methods import PARAMETERS

    options = {_API_NAMES.get(dest, dest): getattr(args, dest) for dest in (*_OPTION_DESTS, *PARAMETERS)
               if getattr(args, dest, None) is not None}
    if isinstance(getattr(args, "alpha", None), float):  # not 'search'
        options["alpha"] = args.alpha
    return options


def _check_merge_arguments(args: argparse.Namespace) -> dict:
    """Every option of ``hf-tsv merge`` checked before any work (the API checks them again, identically);
    returns them as the API's keyword arguments."""
    import hf_tsv
    from hf_tsv.methods import PARAMETERS, MethodOptions, get_method
    from hf_tsv.options import MergeOptions

    options = _option_arguments(args)
    if args.alpha_grid is not None and args.alpha != "search":
        raise hf_tsv.MergeInputError("--alpha-grid only applies with --alpha search (α chosen on the validation "
                                     "splits of --eval's tasks); add --alpha search, or drop --alpha-grid")
    MergeOptions.from_arguments(**options, alpha_grid=args.alpha_grid)
    if not get_method(args.method).uses_alpha and args.alpha is not None:
        print(f"note: {args.method} ignores --alpha", file=sys.stderr)
    defaults = MethodOptions()
    for name, spec in PARAMETERS.items():
        if getattr(args, name, None) not in (None, getattr(defaults, name)) and args.method not in spec.methods:
            print(f"note: {spec.flag} only applies to --method {' or '.join(spec.methods)}; {args.method} "
                  "ignores it", file=sys.stderr)
    return options


def _check_json_file(args: argparse.Namespace) -> None:
    """Refuse a ``--json FILE`` that cannot be written (missing folder, inside an input...) before any work."""
    from hf_tsv.io.output import check_output_file

    if getattr(args, "json", None):
        inputs = [args.model, *(args.finetuned or [])] if args.command == "eval" else [args.base, *args.models]
        check_output_file(args.json, inputs=inputs)


def _run(args: argparse.Namespace) -> int:
    import hf_tsv
    from hf_tsv.io.output import write_json

    options = _check_merge_arguments(args) if args.command == "merge" else _option_arguments(args)
    _check_json_file(args)
    if args.command in ("merge", "plan") and (args.command == "plan" or args.dry_run):
        info = hf_tsv.plan(args.base, args.models, revision=args.revision, token=args.token, **options)
        _print_plan(info)
        if getattr(args, "json", None):
            write_json(args.json, info)
        return 0
    if args.command == "merge":
        if not args.output and not args.push_to_hub:
            raise hf_tsv.MergeInputError("merge needs -o/--output (or --dry-run, or --push-to-hub)")
        if args.private and not args.push_to_hub:
            raise hf_tsv.MergeInputError("--private only applies with --push-to-hub")
        if args.alpha == "search" or args.eval:
            return _merge_with_eval(args, options)
        result = hf_tsv.merge(args.base, args.models, output_dir=args.output, overwrite=args.overwrite,
                              max_shard_size=args.max_shard_size, revision=args.revision, token=args.token,
                              command=args.recorded_command, **options)
        report = result.report
        _print_warnings(report.warnings)
        print(f"merged {report.num_tasks} models with {report.method} (alpha={report.alpha}) into "
              f"{args.output or 'memory'} in {report.total_seconds:.2f} s")
        if report.sti is not None:
            print(f"STI total: {report.sti.total:.6g} over {len(report.sti.keys)} matrix keys")
        if args.push_to_hub:
            _print_push(result.push_to_hub(args.push_to_hub, private=args.private or None, token=args.token))
        return 0
    if args.command == "compare":
        return _compare(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "card":
        card = hf_tsv.write_card(args.folder, repo_id=args.repo_id, license=args.license, token=args.token)
        print(card.text)
        for warning in card.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"wrote {', '.join(card.files)} in {args.folder}", file=sys.stderr)
        return 0
    if args.command == "space":
        _print_push(hf_tsv.deploy_space(args.space_id, private=args.private or None, hardware=args.hardware,
                                        model_library=args.model_library, tasks=args.tasks,
                                        commit_message=args.commit_message, token=args.token))
        return 0
    if args.command == "push":
        _print_push(hf_tsv.push_to_hub(args.folder, args.repo_id, private=args.private or None,
                                       revision=args.revision, create_pr=args.create_pr,
                                       commit_message=args.commit_message, token=args.token, license=args.license))
        return 0
    if args.command == "sti":
        report = hf_tsv.sti(args.base, args.models, revision=args.revision, token=args.token, **options)
        print(report.table())
        _print_warnings(report.warnings)
        if args.json and is_main_process():  # every process holds the same report: one writes
            report.to_json(args.json)
        return 0
    if args.command == "compress":
        res = hf_tsv.compress(args.base, args.models, args.output, rank_fraction=args.rank_fraction,
                              overwrite=args.overwrite, max_shard_size=args.max_shard_size, token=args.token,
                              **options)
        print(res.summary())
        _print_warnings(res.index.get("warnings", []))
        print(f"written to {args.output}; rebuild a task with: hf-tsv expand {args.output} --task NAME -o DIR")
        return 0
    if args.command == "expand":
        out = hf_tsv.expand(args.compressed, args.task, args.output, base=args.base, overwrite=args.overwrite,
                            device=args.device, max_shard_size=args.max_shard_size, token=args.token)
        print(f"rebuilt task {args.task!r} into {out}")
        return 0
    if args.command == "example":
        return _example(args)
    raise AssertionError(args.command)


def _merge_with_eval(args: argparse.Namespace, options: dict) -> int:
    """merge --eval SPEC [--alpha search]: one merge (Δ once), α from validation, test accuracy written."""
    import hf_tsv
    from hf_tsv.evaluation import load_tasks_spec
    from hf_tsv.evaluation.select import merge_with_alpha_search
    from hf_tsv.options import MergeOptions

    if not args.eval:
        raise hf_tsv.MergeInputError("--alpha search needs --eval TASKS_SPEC (the tasks whose validation splits "
                                     "choose α)")
    config = load_tasks_spec(args.eval)
    options = dict(options)
    if args.alpha != "search":  # a fixed α, evaluated on the test splits: the method's default when not given
        options["alpha"] = MergeOptions.from_arguments(**options).effective_alpha
    result, search, test = merge_with_alpha_search(
        args.base, args.models, config, grid=args.alpha_grid, output_dir=args.output, overwrite=args.overwrite,
        batch_size=args.batch_size, max_examples=args.max_examples, revision=args.revision, token=args.token,
        command=args.recorded_command, **options)
    report = result.report
    _print_warnings(report.warnings)
    if search is not None:
        print(f"α search ({search.criterion} validation accuracy, {len(search.grid)} values):")
        for value in search.grid:
            mark = "  <- best" if value == search.best_alpha else ""
            scores = search.validation[value]
            norm = scores.mean_normalized_accuracy
            print(f"  α={value:<8.4g} accuracy {scores.mean_accuracy:6.2f}%  normalized "
                  f"{'–' if norm is None else f'{norm:6.2f}%'}{mark}")
    print(f"\nmerged {report.num_tasks} models with {args.method} at α={report.alpha:g}; "
          f"test accuracy:\n{test.table()}")
    if args.output:
        print(f"written to {args.output} (weights, merge_report.json, eval_results.json)")
    if args.push_to_hub:
        _print_push(result.push_to_hub(args.push_to_hub, private=args.private or None, token=args.token))
    return 0


def _add_compare_parser(sub) -> None:
    from .methods import METHODS

    p = sub.add_parser("compare", help="which method? every merge method side by side on your models",
                       description="Merge with each method (one at a time), choose α on the validation splits of "
                       "--eval's tasks, and compare test accuracy, STI, the merged delta, time and memory. Writes "
                       "compare.json, compare.md and plots to -o; --keep-best also writes the best method's merge "
                       "there (chosen by validation score), ready for `hf-tsv push`.")
    _add_inputs(p)
    p.add_argument("-o", "--output", required=True, help="output folder (written atomically)")
    p.add_argument("--methods", metavar="LIST", help=f"comma-separated methods (default: all: {','.join(METHODS)})")
    p.add_argument("--eval", metavar="TASKS_SPEC", help="task spec (JSON/YAML): score each merge on the tasks "
                   "(without it: STI and merged-weight statistics only, each method at its default α)")
    p.add_argument("--alpha", choices=["search", "default"], default="search",
                   help="search: α chosen on the validation splits (default, with --eval); default: each method's α")
    p.add_argument("--alpha-grid", metavar="GRID", help="α values every method searches: 0.1,0.5,1, start:stop:step "
                   "or 'quick' (each method's coarse grid); default: each method's own grid")
    p.add_argument("--tsvc", action="store_true", help="also score TSV-C retention (each task rebuilt from its "
                   "rank-r/T factors; needs --eval)")
    p.add_argument("--keep-best", action="store_true", help="write the best method's merge (at its α) into -o as "
                   "`hf-tsv merge -o` would, its model card with the comparison table")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier hf-tsv output in -o")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="evaluation batch size")
    p.add_argument("--max-examples", type=_positive_int, help="evaluate at most N examples per task and split")
    _add_method_parameters(p)
    _add_compute(p)


def _compare(args: argparse.Namespace) -> int:
    """hf-tsv compare: every option checked by :func:`hf_tsv.compare` before any work; a line per finished row."""
    import hf_tsv

    options = _option_arguments(args)
    options.pop("method", None)

    def show(entry) -> None:
        test = entry.test
        scores = "" if test is None else (f": test {test.absolute:.2f}% (normalised "
                                          f"{'–' if test.normalized is None else f'{test.normalized:.2f}%'})")
        alpha = "" if entry.alpha is None else f" at α={entry.alpha:g}"
        print(f"{entry.title}{alpha}{scores} in {entry.seconds:.1f} s", file=sys.stderr)

    result = hf_tsv.compare(args.base, args.models, methods=args.methods, evaluator=args.eval, alpha=args.alpha,
                            alpha_grid=args.alpha_grid, output_dir=args.output, keep_best=args.keep_best,
                            overwrite=args.overwrite, tsvc=args.tsvc, batch_size=args.batch_size,
                            max_examples=args.max_examples, on_result=show, revision=args.revision,
                            token=args.token, command=args.recorded_command, **options)
    print(result.table())
    kept = f"; the best merge ({result.best}) is there too, ready for `hf-tsv push`" if result.kept else ""
    print(f"wrote compare.json, compare.md and plots to {args.output}{kept}", file=sys.stderr)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from hf_tsv.evaluation import evaluate_folder

    report = evaluate_folder(args.model, args.tasks, finetuned=args.finetuned, split=args.split,
                             batch_size=args.batch_size, max_examples=args.max_examples, device=args.device)
    print(report.table())
    if args.json:
        report.save_json(args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


# The offline benchmark is not part of the installed package: it lives beside it in a source checkout.
BENCHMARK_PACKAGE = "hf_tsv_bench"
CHECKOUT_BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_package() -> ModuleType:
    """The offline benchmark package ``hf_tsv_bench``: importable as it is (an environment that installed or put
    it on ``sys.path``), else loaded from ``benchmarks/hf_tsv_bench`` of the source checkout this ``hf_tsv`` runs
    from (an editable install, or ``PYTHONPATH=<checkout>``). Only that package is loaded, without adding
    ``benchmarks/`` (and its scripts) to ``sys.path``.

    Raises:
        BenchmarkUnavailableError: neither is there, as in an installed wheel; the message says how to get it.
    """
    import importlib
    import importlib.util

    from .errors import BenchmarkUnavailableError

    if importlib.util.find_spec(BENCHMARK_PACKAGE) is not None:
        return importlib.import_module(BENCHMARK_PACKAGE)
    init = CHECKOUT_BENCHMARKS / BENCHMARK_PACKAGE / "__init__.py"
    if not init.is_file():
        raise BenchmarkUnavailableError(
            "the offline benchmark is not part of the installed hf-tsv package: it lives in the source checkout "
            "(benchmarks/hf_tsv_bench); clone the repository and run `bash dev.sh bench` there, or `pip install -e "
            "'.[bench]'` from the checkout and run `hf-tsv bench` again")
    spec = importlib.util.spec_from_file_location(BENCHMARK_PACKAGE, init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[BENCHMARK_PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(BENCHMARK_PACKAGE, None)
        raise
    return module


def _bench(args: argparse.Namespace) -> int:
    bench = benchmark_package()
    if args.seeds is not None:
        return _bench_seeds(bench, args)
    if args.bench_command == "build":
        bench.build_suite(args.suite, args.cache, quick=args.quick, seed=args.seed, force=args.force)
        return 0
    payload = bench.run_suite(args.suite, args.cache, quick=args.quick, out_dir=args.out)
    out = Path(args.out) if args.out else bench.suite_build_dir(args.suite, args.cache, args.quick) / "results"
    print((out / "results.md").read_text())  # the table run_benchmark wrote
    print(f"results.json, results.md and plots in {out} ({payload['timings']['total_s']:.0f} s)")
    return 0


def _bench_seeds(bench: ModuleType, args: argparse.Namespace) -> int:
    """``bench build|run --seeds LIST``: every seed in its own cache folder; run prints the mean ± std table."""
    seeds = bench.seeds.parse_seeds(args.seeds)
    suite, cache = bench.seeds.suite_for_seeds(args.suite, args.cache, quick=args.quick,
                                               force=getattr(args, "force", False))
    if args.bench_command == "build":
        bench.seeds.build_seeds(suite, seeds, cache)
        return 0
    result, out = bench.seeds.run_suite(suite, seeds, cache, args.out)
    print((out / "results.md").read_text())
    print(f"results.json, results.md and normalized_accuracy.png in {out}, each seed in {out}/seed<s> "
          f"({result['timings']['total_s']:.0f} s)")
    return 0


def _print_push(result) -> None:
    _print_warnings(result.warnings)
    if result.unchanged:
        print(f"{result.repo_id} is up to date, nothing was committed: {result.url}")
        return
    what = "opened a pull request" if result.pr_url else f"committed to {result.revision}"
    print(f"pushed {len(result.files)} files to {result.repo_id} ({what}): {result.url}")


def _example(args: argparse.Namespace) -> int:
    """The README's first command: generate tiny checkpoints, print their STI, merge them, load the result."""
    import hf_tsv
    from hf_tsv.synthetic import make_checkpoints

    if args.num_tasks < 2:
        raise hf_tsv.MergeInputError(f"--num-tasks must be at least 2 (a merge needs two fine-tuned models), got "
                                     f"{args.num_tasks}")
    work = Path(args.output)
    paths = make_checkpoints(work / "checkpoints", preset=args.preset, num_tasks=args.num_tasks)
    print(f"generated a base and {args.num_tasks} fine-tuned CLIPVisionModel checkpoints in {work / 'checkpoints'}")
    report = hf_tsv.sti(paths["base"], paths["tasks"])
    print("\nSingular Task Interference per layer (k = floor(r/T)):")
    print(report.table())
    result = hf_tsv.merge(paths["base"], paths["tasks"], method="tsv-m", output_dir=work / "merged",
                          overwrite=True, command=args.recorded_command)
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(str(work / "merged"))
    print(f"\nTSV-M merge written to {work / 'merged'} in {result.report.total_seconds:.2f} s; "
          f"CLIPVisionModel.from_pretrained loads it ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def recorded_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The command that reproduces this run, rebuilt from the parsed arguments (never from the raw command
    line, where an abbreviated option could hide a secret): the sub-command(s), the positional arguments, then
    every option whose value differs from its default, in the parser's order. The value of a secret option
    (``--token``) is replaced by ``***``. Local paths are reduced to names when the command is made public
    (:func:`hf_tsv.secrets.public_command`).

    Example:
        >>> parser = build_parser()
        >>> recorded_command(parser, parser.parse_args(["plan", "base", "a", "b", "--token", "hf_x"]))
        "hf-tsv plan base a b --token '***'"
    """
    words = [parser.prog]
    current = parser
    while True:
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            break
        words.append(getattr(args, sub.dest))
        current = sub.choices[words[-1]]
    options: list[str] = []
    for action in current._actions:
        if action.dest == argparse.SUPPRESS or action.help == argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if not action.option_strings:
            words += [str(v) for v in values if v is not None]
        elif value is not None and value is not False and value != action.default:
            flag = action.option_strings[0]
            if action.nargs == 0:
                options.append(flag)
            elif action.dest in SECRET_OPTIONS:
                options += [flag, REDACTED]
            else:
                options += [flag, *map(str, values)]
    return shlex.join(words + options)


# OpenMP reads OMP_WAIT_POLICY once, when torch loads: busy-waiting threads ran 2-10x slower on this project's
# 2-core machine when another process held a core. The command sets it (only a default: an explicit setting is
# kept); importing hf_tsv sets nothing.
WAIT_POLICY = "PASSIVE"


def main(argv: list[str] | None = None) -> int:
    """The ``hf-tsv`` command: parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status
    (0, 2 for bad input with one line on stderr, 130/143 when interrupted, 1 for a bug)."""
    os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)
    tune_for_merging()
    parser = build_parser()
    args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    args.recorded_command = recorded_command(parser, args)
    _configure_threads(getattr(args, "threads", None))
    from .errors import HFTSVError
    from .io.output import Terminated

    secrets = known_secrets(getattr(args, "token", None))
    secondary = not is_main_process()  # the main process says what failed
    try:
        _refuse_unsharded_writer(args)
        with _process_group(args) as secondary:
            return _run(args)
    except HFTSVError as exc:
        if not secondary:  # the main process says it once, naming the process that failed
            print(f"hf-tsv {args.command}: error: {redact(str(exc), secrets)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hf-tsv: interrupted; no partial output was left", file=sys.stderr)
        return 130
    except Terminated as exc:
        print("hf-tsv: terminated (SIGTERM); no partial output was left", file=sys.stderr)
        return exc.code
    except Exception:  # a bug: show its traceback, but never a token that a library put in a message
        import traceback

        print(redact(traceback.format_exc(), secrets), file=sys.stderr, end="")
        return 1


def run_as_program(argv: list[str] | None = None) -> NoReturn:
    """The ``hf-tsv`` program (the console script and ``python -m hf_tsv``): :func:`main`, then end the process with
    its status. Under torchrun with several processes it ends with ``os._exit`` once the streams are flushed: by
    then the command has stopped its process group (every process passed its last barrier, the output is complete
    and closed). Python's own exit aborted process 0 in about 1 run in 35 to 1 in 6 (``terminate called without an
    active exception``, exit -6): a core dump shows a gloo worker thread (``ProcessGroupGloo::runLoop``) freeing the
    last barrier's work, whose earlier all-gather holds tensors owned by Python objects; their decref takes the GIL
    while the main thread is in ``Py_FinalizeEx``, so Python ends that thread (``pthread_exit``) inside a
    ``noexcept`` C++ destructor and ``std::terminate`` aborts. With ``os._exit`` Python is not finalised. A program
    that calls :func:`main` keeps its process (and a process group it started).

    Example:
        >>> run_as_program(["--version"])  # doctest: +SKIP
    """
    status = main(argv)
    if launched_world_size() > 1:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run_as_program()
