"""hf-tsv Space: pick a base and fine-tuned CLIP vision models, measure their interference (STI), merge them
with TSV-M or a baseline, look at the model card and push the result to the Hub.

Run locally with ``python spaces_app/app.py`` (``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT`` are honoured);
set ``HF_TSV_MODEL_LIBRARY`` to a folder of checkpoints to offer its sub-folders by name, and
``HF_TSV_SPACE_TASKS`` to a task spec of ``hf_tsv.evaluation`` to evaluate merges on its tasks. Named endpoints
for ``gradio_client``: ``/sti``, ``/merge``, ``/compare`` (one update per finished method), ``/keep`` and ``/push``
(see README.md beside this file).
"""

import contextlib
import html
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import hf_tsv  # noqa: E402, F401 - the package the app runs; not on PyPI
except ImportError:
    sys.exit("hf-tsv is not installed. Deploy this app with `hf-tsv space deploy SPACE_ID` (it ships hf-tsv as a "
             "wheel in the Space's commit); to run it locally, `pip install -e \".[space,eval]\"` in the checkout.")
import gradio as gr  # noqa: E402
import space_core  # noqa: E402
from space_compare import CompareView, method_label  # noqa: E402
from space_core import CompareJob, EvaluationSettings, MergeJob, Settings, SpaceError, StiJob, Workspace  # noqa: E402
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("hf_tsv.space")

MAX_ALPHA = 10.0  # the α box takes (0, MAX_ALPHA]: a range of this form; the merge's own rules are MergeOptions'
# System fonts only: the page loads nothing from outside the server.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
# Gradio hands each call a progress tracker of its own in place of this default (which asks to track tqdm bars).
TRACK_TQDM = gr.Progress(track_tqdm=True)
CSS = "#merge-card {max-height: 720px; overflow-y: auto}"


@contextlib.contextmanager
def visitor_errors(secret: str | None = None):
    """Show a :class:`SpaceError` to the visitor as ``gr.Error`` (HTML-escaped, without the token or anything
    shaped like one). Its message was built for the visitor: either by this app, or from an hf_tsv error through
    :func:`space_core.visitor_message`."""
    from hf_tsv.secrets import known_secrets, redact

    try:
        yield
    except SpaceError as exc:
        message = redact(str(exc), known_secrets(secret))
        # gr.Error renders HTML: markup in a visitor's input (quoted in messages) must stay text
        raise gr.Error(html.escape(message, quote=False), print_exception=False) from None


class _NullFile:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


class ProgressMirror:
    """Replays the worker's progress events: each of its tqdm bars becomes a tqdm bar here, which
    ``gr.Progress(track_tqdm=True)`` shows; stage messages go to the progress text."""

    def __init__(self, progress):
        self.progress = progress
        self.bars: dict = {}

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "stage":
            self.progress(float(event.get("fraction", 0.0)), desc=str(event.get("text", "")))
        elif kind == "bar":
            bar = self.bars.get(event.get("id"))
            if bar is None:
                bar = tqdm(total=event.get("total"), desc=str(event.get("desc") or "working"),
                           unit=str(event.get("unit") or "it"), file=_NullFile(), leave=False, mininterval=0)
                self.bars[event.get("id")] = bar
            delta = (event.get("n") or 0) - bar.n
            if delta > 0:
                bar.update(delta)
        elif kind == "close":
            bar = self.bars.pop(event.get("id"), None)
            if bar is not None:
                bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def sti_rows(keys: dict[str, float]) -> tuple[list[str], list[list[str]]]:
    """The STI per layer (rows) and layer type (columns), as :mod:`hf_tsv.sti_table` shows it everywhere."""
    from hf_tsv.sti_table import sti_table

    table = sti_table(keys)
    return table.headers, table.records()


def sti_summary(keys: dict[str, float], total: float, num_tasks: int) -> str:
    from hf_tsv.sti_table import layer_and_type

    if not keys:
        return "No weight matrix to analyse."
    worst = max(keys, key=keys.get)
    layer, kind = layer_and_type(worst)
    where = f"layer {layer}, `{kind}`" if layer != "-" else f"`{kind}`"
    return (f"**Total STI: {total:.4g}** over {len(keys)} weight matrices of {num_tasks} fine-tuned models "
            f"(each task keeps its top k = ⌊r/T⌋ singular directions per matrix). Highest: {where} "
            f"({keys[worst]:.4g}).\n\nSTI (Singular Task Interference) grows when the tasks' top singular "
            "directions overlap: there, summing task vectors (task arithmetic) mixes the tasks up the most. "
            "TSV-M orthogonalises these directions before merging.")


def default_alpha(name: str) -> float:
    """The α the box shows for a method: the one the merge uses when none is given."""
    from hf_tsv.methods import get_method, resolve_alpha

    return resolve_alpha(get_method(name), None)


def alpha_info() -> str:
    """The α box's help: every method's default, from :data:`hf_tsv.METHODS`."""
    from hf_tsv.methods import METHODS, describe_alpha

    defaults = "; ".join(f"{method_label(m.name)} {describe_alpha(m)}" for m in METHODS.values())
    return (f"set to the method's default when the method changes ({defaults}); above 0 and at most "
            f"{MAX_ALPHA:g}")


def merge_summary(report, zip_bytes: int, warnings: list[str], evaluation: dict | None = None) -> str:
    """The result of a merge for the visitor, from its :class:`hf_tsv.report.MergeReport`."""
    lines = [f"### {method_label(report.method)} merge of {report.num_tasks} models"]
    if report.uses_alpha:
        lines.append(f"- α = {report.alpha}")
    lines.append(f"- base: `{report.base.repo_id or report.base.name}`")
    lines.append("- fine-tuned: " + ", ".join(f"`{m.repo_id or m.name}`" for m in report.models or []))
    if report.sti is not None:
        lines.append(f"- total STI: **{report.sti.total:.4g}** ({len(report.sti.keys)} matrices)")
    else:
        lines.append("- STI is computed by TSV-M merges; use *Analyse interference* for this set of models")
    output, options = report.output, report.options
    lines.append(f"- output: `{output.class_name}` ({output.dtype}), {zip_bytes / 1e6:.1f} MB zipped")
    lines.append(f"- device: {options.device}; fused q/k/v: {options.fuse_qkv}; "
                 f"merge time {report.total_seconds or 0:.1f} s")
    if evaluation and evaluation.get("error"):
        lines.append("- evaluation: **failed** (see *Evaluation* below); the merge itself is complete")
    elif evaluation:
        norm = evaluation.get("mean_normalized_accuracy")
        lines.append(f"- evaluation: mean accuracy **{evaluation['mean_accuracy']:.2f} %**"
                     + (f", normalised **{norm:.2f} %**" if norm is not None else "")
                     + f" on {len(evaluation['results']['tasks'])} tasks (see *Evaluation* below)")
    lines.extend(f"- note: {html.escape(str(w))}" for w in warnings)
    return "\n".join(lines)


def evaluation_markdown(evaluation: dict | None, models: list[str], max_examples: int) -> str:
    """The evaluation of a merge for the result view: the table of hf_tsv.evaluation and how to read it, or why
    there is none."""
    if not evaluation:
        return ""
    if evaluation.get("error"):
        return ("### Evaluation\n**The evaluation failed:** " + html.escape(str(evaluation["error"]), quote=False)
                + "\n\nThe merge itself is complete; its card and download have no evaluation.")
    tasks = list(evaluation["results"]["tasks"])
    lines = ["### Evaluation", "", f"Top-1 accuracy of the merged model on the test split of each of this server's "
             f"tasks (at most {max_examples} images per task), scored with the tasks' frozen heads:", "",
             evaluation["table"], ""]
    if evaluation.get("paired"):
        pairs = ", ".join(f"{html.escape(t)} ↔ `{m}`" for t, m in zip(tasks, models))
        lines.append("Normalised accuracy = the merged model's accuracy ÷ the accuracy of the fine-tuned model "
                     f"paired with the task (task i ↔ fine-tuned model i, in the order given): {pairs}.")
    else:
        lines.append(f"Absolute accuracy only: normalised accuracy pairs task i with fine-tuned model i, and this "
                     f"merge has {len(models)} fine-tuned models for the server's {len(tasks)} tasks.")
    lines.append("The model card and `eval_results.json` in the download hold the same numbers.")
    return "\n".join(lines)


def card_preview(text: str) -> str:
    """The model card for display: its YAML header as a code block, the heatmap link (a file of the repository)
    replaced by a pointer to the heatmap shown beside it."""
    body, header = text, ""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            header, body = text[4:end], text[end + 4:].lstrip("\n")
    lines = []
    for line in body.splitlines():
        if line.startswith("![") and "(sti_heatmap.png)" in line:
            lines.append("*(the STI heatmap, `sti_heatmap.png`, is shown above)*")
        else:
            lines.append(line)
    preview = "\n".join(lines)
    return f"```yaml\n{header.strip()}\n```\n\n{preview}" if header else preview


# --------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------


def _check_alpha(alpha, method: str) -> float | None:
    """α as every merge checks it (:class:`hf_tsv.MergeOptions`), then within the α box's range."""
    if alpha is None or alpha == "":
        return None
    from hf_tsv.errors import MergeInputError
    from hf_tsv.options import MergeOptions

    try:
        value = MergeOptions(method=method, alpha=alpha, device="cpu").alpha
    except MergeInputError as exc:
        raise SpaceError(space_core.visitor_message(str(exc))) from None
    if not 0 < value <= MAX_ALPHA:
        raise SpaceError(f"α must be above 0 and at most {MAX_ALPHA:g} (got {value:g})")
    return value


def _check_choice(value, choices, what: str):
    if value not in choices:
        raise SpaceError(f"unknown {what} {str(value)[:30]!r}; choose one of {', '.join(map(str, choices))}")
    return value


def _check_methods(methods) -> tuple[str, ...]:
    """The methods a visitor ticked: known names of :data:`hf_tsv.METHODS`, at least one, in the registry's
    order."""
    from hf_tsv.methods import METHODS

    chosen = [methods] if isinstance(methods, str) else list(methods or [])
    for name in chosen:
        _check_choice(name, list(METHODS), "method")
    if not chosen:
        raise SpaceError("tick at least one method to compare")
    return tuple(name for name in METHODS if name in chosen)


def _devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def build_demo(settings: Settings | None = None, workspace: Workspace | None = None,
               pool: space_core.WorkerPool | None = None) -> gr.Blocks:
    """The Gradio app. ``settings`` default to :meth:`Settings.from_env`; ``workspace`` holds the sessions'
    temporary folders (default: a new one under the system temporary folder, removed at exit); ``pool`` runs
    the jobs (default: one worker process per job, with a spare one started ahead of time)."""
    from hf_tsv.methods import DEFAULT_METHOD, METHODS

    settings = settings or Settings.from_env()
    workspace = workspace or Workspace()
    pool = pool or space_core.WorkerPool(settings, workspace, spares=settings.spare_workers)
    devices = _devices()
    tasks = space_core.task_names(settings.tasks) if settings.tasks else []
    library = list(space_core.library_models(settings.library))
    default_base = "base" if "base" in library else None
    default_models = [m for m in library if m != default_base][: settings.max_models] if default_base else []

    def prepare(base_library, base_hub, models_library, models_hub, fuse_qkv, device):
        base, models = space_core.resolve_inputs(base_library, base_hub, models_library, models_hub, settings)
        _check_choice(device, devices, "device")
        (base, *models), total = space_core.pin_models([base, *models], settings)  # workers read those commits
        return base, models, total, bool(fuse_qkv)

    def server_paths() -> list[str]:
        """Server folders that messages for visitors must not show (any other path is reduced to its name)."""
        return [str(workspace.root), str(settings.hub_cache)] + ([str(settings.library)] if settings.library else [])

    def common_job(base, models, fuse_qkv, device, job_dir) -> dict:
        """The fields every job has (:class:`space_core.StiJob`)."""
        return dict(base=base.worker_ref, models=tuple(m.worker_ref for m in models), fuse_qkv=fuse_qkv,
                    device=device, threads=settings.threads, memory_gb=settings.worker_memory_gb,
                    scrub=(*([str(job_dir)] if job_dir else []), *server_paths()))

    results_cap = settings.max_results_gb * space_core.GB

    def run(job, job_dir, progress, reserve: float = 0, on_event=None):
        """Run a job whose result needs about ``reserve`` bytes, after making room for it among the kept results
        (``HF_TSV_SPACE_MAX_RESULTS_GB``: the oldest results of any session are evicted first). The worker's
        events go to ``progress`` (mirrored), or to ``on_event`` when given."""
        mirror = ProgressMirror(progress)
        try:
            if not workspace.make_room(results_cap, reserve, keep=[job_dir]):
                raise SpaceError(f"this server keeps at most {settings.max_results_gb:g} GB of results "
                                 "(HF_TSV_SPACE_MAX_RESULTS_GB) and the results in use fill it; try again in a few "
                                 "minutes, or with smaller models")
            with workspace.in_use(job_dir):
                result = pool.run(job, job_dir, on_event or mirror)
            workspace.make_room(results_cap, keep=[job_dir])  # the estimate may have been short: evict older ones
            return result
        except BaseException:
            workspace.delete(job_dir)
            raise
        finally:
            mirror.close()
            for name in ("job.json", "result.json"):
                (job_dir / name).unlink(missing_ok=True)

    def analyse(base_library, base_hub, models_library, models_hub, fuse_qkv, device, session,
                progress=TRACK_TQDM):
        """Singular Task Interference per weight matrix, without merging: heatmap, table, raw numbers."""
        import tempfile

        from hf_tsv.io.output import write_file_atomic
        from hf_tsv.sti_table import sti_heatmap_png

        with visitor_errors():
            base, models, _, fuse = prepare(base_library, base_hub, models_library, models_hub, fuse_qkv, device)
            progress(0.0, desc="starting the worker")
            folder = workspace.session_dir(session)
            job_dir = Path(tempfile.mkdtemp(prefix="sti-", dir=folder))
            result = run(StiJob(**common_job(base, models, fuse, device, job_dir)), job_dir, progress)
            state = dict(session or {}, dir=str(folder))
            workspace.delete(state.get("sti"))
            state["sti"] = str(job_dir)
        keys, total = result["keys"], result["total"]
        png = sti_heatmap_png(keys, f"STI per layer — {len(models)} models of {base.label}")
        heatmap = None
        if png is not None:
            heatmap = job_dir / "sti_heatmap.png"
            write_file_atomic(heatmap, png)
        headers, rows = sti_rows(keys)
        raw = {"k": "floor(r/T)", "total": total, "num_tasks": result["num_tasks"], "fuse_qkv": result["fuse_qkv"],
               "keys": keys}
        table = {"headers": headers, "data": rows}
        summary = sti_summary(keys, total, result["num_tasks"])
        return (str(heatmap) if heatmap else None), table, raw, summary, state

    def merge(base_library, base_hub, models_library, models_hub, method, alpha, fuse_qkv, device, evaluate,
              session, progress=TRACK_TQDM):
        """Merge, write the model card, pack the merged folder; the result stays in this session for a push."""
        with visitor_errors():
            _check_choice(method, list(METHODS), "method")
            alpha = _check_alpha(alpha, method)
            if evaluate and not tasks:
                raise SpaceError("no evaluation tasks are configured on this server (HF_TSV_SPACE_TASKS)")
            base, models, total, fuse = prepare(base_library, base_hub, models_library, models_hub, fuse_qkv,
                                                device)
            name = f"hf-tsv-{method}-merge"
            command = " ".join(["hf-tsv", "merge", base.label, *[m.label for m in models], "--method", method]
                               + (["--alpha", f"{alpha:g}"] if alpha is not None else [])
                               + (["--fuse-qkv"] if fuse else []) + ["-o", name])
            job = dict(common_job(base, models, fuse, device, None), method=method, alpha=alpha, command=command,
                       evaluate=EvaluationSettings(str(settings.tasks), settings.eval_max_examples)
                       if evaluate else None)
            return merged_view(*run_merge(job, name, session, progress, total, len(models)),
                               [m.label for m in models])

    def run_merge(fields: dict, name: str, session, progress, total: int, count: int):
        """Run a merge job (``fields`` of :class:`MergeJob` but its folders) in a new job folder of the session;
        the merge becomes the session's one merge (what *Push to Hub* pushes). Returns the result, the merged
        folder, its zip and the new session state."""
        import tempfile

        progress(0.0, desc="starting the worker")
        folder = workspace.session_dir(session)
        job_dir = Path(tempfile.mkdtemp(prefix="merge-", dir=folder))
        fields["scrub"] = (str(job_dir), *server_paths())
        job = MergeJob(**fields, output=str(job_dir / name), zip=str(job_dir / f"{name}.zip"))
        # the merged folder and its zip: about twice one model's weights
        result = run(job, job_dir, progress, reserve=2 * total / (count + 1))
        state = dict(session or {}, dir=str(folder))
        workspace.delete(state.get("merge"))
        state.update(merge=str(job_dir), folder=str(job_dir / name))
        return result, job_dir / name, job_dir / f"{name}.zip", state

    def merged_view(result: dict, out: Path, zip_path: Path, state: dict, labels: list[str]):
        """What the Merge tab shows of a finished merge: summary, heatmap, card, download, evaluation, state."""
        from hf_tsv.report import MergeReport

        report = MergeReport.from_dict(result["report"])
        heatmap = out / "sti_heatmap.png"
        card = card_preview((out / "README.md").read_text(encoding="utf-8"))
        evaluation = result.get("evaluation")
        if evaluation and evaluation.get("error"):
            gr.Warning(html.escape(f"The merge is done, but its evaluation failed: {evaluation['error']}",
                                   quote=False))
        summary = merge_summary(report, zip_path.stat().st_size, result.get("card_warnings") or [], evaluation)
        scores = evaluation_markdown(evaluation, labels, settings.eval_max_examples)
        return summary, (str(heatmap) if heatmap.is_file() else None), card, str(zip_path), scores, state

    def run_streaming(job, job_dir, progress, reserve: float = 0):
        """:func:`run` in a thread; yields each event of the worker here (progress events are mirrored to
        ``progress`` too), then returns the result (``result = yield from run_streaming(...)``)."""
        import queue
        import threading

        events: queue.Queue = queue.Queue()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome["result"] = run(job, job_dir, progress, reserve, on_event=events.put)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                outcome["error"] = exc
            finally:
                events.put(None)

        threading.Thread(target=work, daemon=True, name=f"{job.kind}-job").start()
        mirror = ProgressMirror(progress)
        try:
            while (event := events.get()) is not None:
                mirror(event)
                yield event
        finally:
            mirror.close()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def compare_update(view: CompareView, job_dir: Path, count: int, state):
        """The Compare tab's outputs for the rows finished so far (the plots written to a new folder each time)."""
        accuracy, sti = view.write_plots(job_dir / f"plots-{count}")
        finished = view.finished
        choice = gr.Dropdown(choices=[(method_label(m), m) for m in finished],
                             value=finished[0] if finished else None)
        return (view.progress_markdown(), view.table_markdown(), gr.Image(accuracy, visible=accuracy is not None),
                sti, choice, state)

    def compare(base_library, base_hub, models_library, models_hub, methods, fuse_qkv, device, evaluate, session,
                progress=TRACK_TQDM):
        """Every chosen method on the visitor's models, one at a time in a worker: the table and plots fill in as
        each method finishes. With the operator's tasks (and ``evaluate``), test accuracy too; else STI and the
        statistics of each merged task vector."""
        import tempfile

        with visitor_errors():
            names = _check_methods(methods)
            if evaluate and not tasks:
                raise SpaceError("no evaluation tasks are configured on this server (HF_TSV_SPACE_TASKS)")
            base, models, total, fuse = prepare(base_library, base_hub, models_library, models_hub, fuse_qkv,
                                                device)
            folder = workspace.session_dir(session)
            job_dir = Path(tempfile.mkdtemp(prefix="compare-", dir=folder))
            evaluation = EvaluationSettings(str(settings.tasks), settings.eval_max_examples) if evaluate else None
            job = CompareJob(**common_job(base, models, fuse, device, job_dir), methods=names,
                             output=str(job_dir / "comparison"), labels=(base.label, *[m.label for m in models]),
                             evaluate=evaluation)
            paired = evaluate and len(tasks) == len(models)
            view = CompareView(list(names), (["finetuned"] if paired else []) + (["zero-shot"] if evaluate else []))
            state = dict(session or {}, dir=str(folder))
            yield compare_update(view, job_dir, 0, state)
            count = 0
            # the comparison's files and plots only: no merge is kept
            for event in run_streaming(job, job_dir, progress, reserve=0):
                if view.follow(event):
                    count += 1
                    yield compare_update(view, job_dir, count, state)
                elif event.get("event") == "step":
                    yield view.progress_markdown(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            workspace.delete(state.get("compare"))
            state["compare"] = str(job_dir)
            # what "merge the chosen method" needs: the same models (pinned), options and evaluation
            state["compared"] = dict(job=dict(common_job(base, models, fuse, device, None), evaluate=evaluation),
                                     labels=[base.label, *[m.label for m in models]], total=total)
            yield compare_update(view, job_dir, count + 1, state)

    def keep_compared(choice, session, progress=TRACK_TQDM):
        """Merge the method the visitor chose from this session's comparison, at the α it was compared at, with the
        comparison in its card; it becomes the session's merge (download here, push from *Push to Hub*)."""
        from hf_tsv.compare_result import CompareResult

        with visitor_errors():
            compared = (session or {}).get("compared")
            folder = Path((session or {}).get("compare") or "")
            if not compared or not folder.is_dir() or not workspace.owns(folder):
                raise SpaceError("there is no comparison in this session yet (or it has expired): compare first")
            with workspace.in_use(folder):
                result = CompareResult.load(folder / "comparison")
                rows = {e.method: e for e in result.methods}
                _check_choice(choice, list(rows), "method")
                method, alpha = choice, rows[choice].alpha
                name = f"hf-tsv-{method}-merge"
                base, *models = compared["labels"]
                command = " ".join(["hf-tsv", "merge", base, *models, "--method", method]
                                   + (["--alpha", f"{alpha:g}"] if alpha is not None else [])
                                   + (["--fuse-qkv"] if compared["job"]["fuse_qkv"] else []) + ["-o", name])
                fields = dict(compared["job"], method=method, alpha=alpha, command=command,
                              comparison=str(folder / "comparison"))
                done, out, zip_path, state = run_merge(fields, name, session, progress, compared["total"],
                                                       len(models))
        summary, heatmap, card, download, scores, state = merged_view(done, out, zip_path, state, models)
        note = (f"{summary}\n\nIts model card holds the comparison table. Push it from the *Push to Hub* tab; "
                "the *Merge* tab shows its card.")
        return note, gr.File(download, visible=True), summary, heatmap, card, download, scores, state

    def push(repo_id, private, create_pr, token, session, oauth_token: gr.OAuthToken | None = None):
        """Push this session's merge to the Hub in one commit, with the visitor's own token."""
        import hf_tsv
        from hf_tsv.errors import HFTSVError

        secret = (oauth_token.token if oauth_token is not None else None) or (token or "").strip() or None
        with visitor_errors(secret):
            target = space_core.check_repo_target(repo_id)
            folder = Path((session or {}).get("folder") or "")
            if not (session or {}).get("folder") or not folder.is_dir() or not workspace.owns(folder):
                raise SpaceError("there is no merged model in this session yet (or it has expired): merge first")
            if secret is None:
                raise SpaceError("sign in with Hugging Face (or paste a token with write access) to push; this "
                                 "Space never pushes with credentials of its own")
            try:
                with workspace.in_use(folder):
                    url = hf_tsv.push_to_hub(folder, target, private=bool(private), create_pr=bool(create_pr),
                                             token=secret)
            except HFTSVError as exc:
                raise SpaceError(space_core.visitor_message(str(exc), server_paths(), [secret])) from None
            except Exception as exc:  # noqa: BLE001 - shown without details that might hold the token
                logger.error("push failed with %s", type(exc).__name__)
                raise SpaceError(f"push to {target} failed ({type(exc).__name__})") from None
        lines = [f"Pushed to **{html.escape(url.repo_id)}** "
                 f"({'pull request' if url.pr_url else f'committed to {url.revision}'}): {url}",
                 "", f"{len(url.files)} files: " + ", ".join(f"`{f}`" for f in url.files)]
        lines += [f"- note: {html.escape(str(w))}" for w in url.warnings]
        card = card_preview((folder / "README.md").read_text(encoding="utf-8"))
        return "\n".join(lines), card

    limits = (f"At most {settings.max_models} fine-tuned models and {settings.max_total_gb:g} GB of weights per "
              f"job; jobs run {settings.concurrency} at a time in a worker process of their own, and at most "
              f"{settings.queue_size} wait in the queue. Results are kept for "
              f"{settings.result_ttl_s // 60} minutes (the oldest go first when all sessions' results together pass "
              f"{settings.max_results_gb:g} GB).")
    ttl = settings.result_ttl_s
    with gr.Blocks(title="hf-tsv: merge CLIP fine-tunes with Task Singular Vectors",
                   delete_cache=(max(60, ttl // 4), ttl)) as demo:
        session = gr.State(None, time_to_live=ttl, delete_callback=workspace.delete_session)
        tsv = METHODS["tsv-m"]
        gr.Markdown("# hf-tsv · Task Singular Vectors merging\n"
                    "Merge fine-tuned CLIP image encoders of one base model without training: see how much they "
                    f"interfere (STI) first, merge with **{tsv.title}** ([{tsv.citation}]({tsv.paper_url})) or a "
                    "baseline, read the model card, and publish.\n\n" + limits)
        with gr.Row():
            with gr.Column(scale=2, min_width=360):
                gr.Markdown("### Models")
                base_library = gr.Dropdown(library, value=default_base, label="Base model (library)",
                                           visible=bool(library), elem_id="base-library")
                base_hub = gr.Textbox(label="Base model (Hub id)", placeholder="openai/clip-vit-base-patch32",
                                      info="namespace/name, optionally @revision; leave empty to use the library"
                                      if library else "namespace/name, optionally @revision",
                                      elem_id="base-hub")
                models_library = gr.Dropdown(library, value=default_models, multiselect=True,
                                             max_choices=settings.max_models, label="Fine-tuned models (library)",
                                             visible=bool(library), elem_id="models-library")
                models_hub = gr.Textbox(label="Fine-tuned models (Hub ids)", lines=3,
                                        placeholder="me/clip-cars\nme/clip-dtd@main\nme/clip-eurosat",
                                        info="one per line", elem_id="models-hub")
                gr.Markdown("### Merge options")
                method = gr.Dropdown([(method_label(key), key) for key in METHODS], value=DEFAULT_METHOD,
                                     label="Method")
                alpha = gr.Number(value=default_alpha(DEFAULT_METHOD), label="α (scale of the merged task vector)",
                                  info=alpha_info())
                with gr.Row():
                    fuse_qkv = gr.Checkbox(False, label="Fuse q/k/v", info="one SVD over the stacked q, k and v "
                                           "projections (the paper's open_clip layout)")
                    device = gr.Radio(devices, value="auto", label="Device")
                evaluate = gr.Checkbox(bool(tasks), label="Evaluate on the configured tasks", visible=bool(tasks),
                                       info=f"test split of {', '.join(tasks)} (at most {settings.eval_max_examples} "
                                       f"images each); normalised accuracy when {len(tasks)} fine-tuned models are "
                                       "merged (task i ↔ fine-tuned model i: library picks first, then Hub ids)"
                                       if tasks else None, elem_id="merge-evaluate")
                with gr.Row():
                    analyse_button = gr.Button("Analyse interference", elem_id="analyse-button")
                    merge_button = gr.Button("Merge", variant="primary", elem_id="merge-button")
            with gr.Column(scale=3, min_width=480), gr.Tabs(selected="merge") as tabs:
                with gr.Tab("Merge", id="merge"):
                    with gr.Row():
                        merge_info = gr.Markdown("Merge to see the result here.", elem_id="merge-summary")
                        download = gr.File(label="Merged model (zip)", interactive=False, elem_id="merge-download",
                                           scale=0, min_width=320)
                    merge_eval = gr.Markdown(elem_id="merge-evaluation")
                    merge_heatmap = gr.Image(label="STI per layer", type="filepath", format="png", interactive=False,
                                             elem_id="merge-heatmap", show_label=True)
                    with gr.Accordion("Model card", open=True):
                        card = gr.Markdown(elem_id="merge-card")
                with gr.Tab("Interference", id="sti"):
                    sti_info = gr.Markdown("*Analyse interference* measures STI without merging.",
                                           elem_id="sti-summary")
                    sti_heatmap = gr.Image(label="STI per layer", type="filepath", format="png",
                                           interactive=False, elem_id="sti-heatmap")
                    sti_table = gr.Dataframe(label="STI per layer and type", interactive=False,
                                             elem_id="sti-table")
                    with gr.Accordion("Raw numbers (JSON)", open=False):
                        sti_json = gr.JSON(label="STI per weight matrix")
                with gr.Tab("Compare", id="compare"):
                    gr.Markdown("Which method for *your* models? Each ticked method merges the models chosen on "
                                "the left at its own default α, one after the other; the table and plots fill in "
                                "as each finishes. " + ("With *Evaluate*, each is scored on this server's tasks."
                                                        if tasks else "This server has no evaluation tasks: the "
                                                        "table shows STI and the size of each merged task vector."))
                    compare_methods = gr.CheckboxGroup([(method_label(key), key) for key in METHODS],
                                                       value=list(METHODS), label="Methods to compare",
                                                       elem_id="compare-methods")
                    compare_evaluate = gr.Checkbox(bool(tasks), label="Evaluate on the configured tasks",
                                                   visible=bool(tasks), elem_id="compare-evaluate")
                    compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                    compare_progress = gr.Markdown("*Compare* runs the ticked methods.", elem_id="compare-progress")
                    compare_table = gr.Markdown(elem_id="compare-table")
                    with gr.Row():
                        compare_accuracy = gr.Image(label="Test accuracy per task and method", type="filepath",
                                                    format="png", interactive=False, visible=False,
                                                    elem_id="compare-accuracy")
                        compare_sti = gr.Image(label="STI per layer (TSV-M)", type="filepath", format="png",
                                               interactive=False, elem_id="compare-sti")
                    with gr.Row():
                        compare_choice = gr.Dropdown([], label="Method to keep", elem_id="compare-choice",
                                                     allow_custom_value=True,
                                                     info="merged at the α it was compared at, with the comparison "
                                                     "in its model card; then push it from *Push to Hub*")
                        keep_button = gr.Button("Merge the chosen method", elem_id="compare-keep-button")
                    keep_info = gr.Markdown(elem_id="compare-keep-summary")
                    keep_download = gr.File(label="Merged model (zip)", interactive=False, visible=False,
                                            elem_id="compare-download")
                with gr.Tab("Push to Hub", id="push"):
                    if settings.on_spaces:
                        gr.LoginButton()
                    token = gr.Textbox(label="Hugging Face token (write access)", type="password",
                                       visible=not settings.on_spaces, placeholder="hf_…",
                                       info="used for this push only; never stored or shown")
                    repo_id = gr.Textbox(label="Repository", placeholder="your-name/clip-tsv-merged")
                    with gr.Row():
                        private = gr.Checkbox(True, label="Private repository")
                        create_pr = gr.Checkbox(False, label="Open a pull request")
                    push_button = gr.Button("Push to Hub", variant="primary", elem_id="push-button")
                    push_info = gr.Markdown(elem_id="push-status")

        method.change(default_alpha, method, alpha, api_visibility="private", queue=False)
        for button, tab in ((analyse_button, "sti"), (merge_button, "merge")):  # show where the result will be
            button.click(lambda tab=tab: gr.Tabs(selected=tab), None, tabs, api_visibility="private", queue=False)
        model_inputs = [base_library, base_hub, models_library, models_hub]
        compute = dict(concurrency_id="compute", concurrency_limit=settings.concurrency)
        analyse_button.click(analyse, [*model_inputs, fuse_qkv, device, session],
                             [sti_heatmap, sti_table, sti_json, sti_info, session], api_name="sti", **compute)
        merge_button.click(merge, [*model_inputs, method, alpha, fuse_qkv, device, evaluate, session],
                           [merge_info, merge_heatmap, card, download, merge_eval, session], api_name="merge",
                           **compute)
        compare_button.click(compare, [*model_inputs, compare_methods, fuse_qkv, device, compare_evaluate, session],
                             [compare_progress, compare_table, compare_accuracy, compare_sti, compare_choice,
                              session], api_name="compare", **compute)
        keep_button.click(keep_compared, [compare_choice, session],
                          [keep_info, keep_download, merge_info, merge_heatmap, card, download, merge_eval, session],
                          api_name="keep", **compute)
        push_button.click(push, [repo_id, private, create_pr, token, session], [push_info, card], api_name="push",
                          concurrency_id="push", concurrency_limit=2)
    demo.queue(default_concurrency_limit=settings.concurrency, max_size=settings.queue_size)
    demo.hf_tsv_settings = settings
    demo.hf_tsv_workspace = workspace
    demo.hf_tsv_pool = pool
    return demo


def launch(demo: gr.Blocks, **kwargs):
    """Launch with this app's theme; the library folder is never served."""
    settings: Settings = demo.hf_tsv_settings
    blocked = [str(settings.library)] if settings.library else []
    options = dict(server_name=os.environ.get("GRADIO_SERVER_NAME") or None,
                   server_port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT")
                   else None,
                   theme=THEME, css=CSS, blocked_paths=blocked, show_error=False)
    options.update(kwargs)
    return demo.launch(**options)


def main() -> None:
    import signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # a stop by SIGTERM (as a Space is stopped) exits like Ctrl+C, so the temporary folders and workers go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    demo = build_demo()
    logger.info("sessions' temporary files go to %s", demo.hf_tsv_workspace.root)
    launch(demo)


if __name__ == "__main__":
    main()
