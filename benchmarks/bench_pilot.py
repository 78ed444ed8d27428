"""Pilot of the offline model-merging benchmark: pretrain, fine-tune per task, merge, evaluate.

Steps: load the pretraining pool and the tasks (``hf_tsv_bench.sources``; without it, a small fallback built
from sklearn's digits and Fashion-MNIST), build every zero-shot head from the frozen MiniLM text encoder,
pretrain a small CLIP vision encoder "locked-text" style, evaluate it zero-shot, fine-tune one copy per task
with that task's frozen head, then merge the fine-tunes with ``hf_tsv.merge`` (avg, ta over an α grid, tsv-m
over an α grid; α chosen on validation accuracy, reported on test) and print a table of absolute and
normalised (merged ÷ fine-tuned, per task, averaged) test accuracies.

    python benchmarks/bench_pilot.py --quick
    python benchmarks/bench_pilot.py --tasks fashion,digits --ft-steps 100 --json pilot.json
    python benchmarks/bench_pilot.py --save-base /tmp/base   # then --load-base /tmp/base to skip pretraining

Runs with one torch thread (the project's machines are small and shared).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # hf_tsv.merge's per-key progress bars

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hf_tsv  # noqa: E402
from hf_tsv_bench import train as bt  # noqa: E402
from hf_tsv_bench.text import MiniLMTextEncoder  # noqa: E402

TA_GRID = [i / 8 for i in range(1, 9)]
TSV_GRID = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]  # the pilot's best TSV-M α was 1.5-2.5


def text_head(encode_texts, class_names, templates, logit_scale: float = 100.0):
    """The shared zero-shot head (one implementation: hf_tsv.evaluation.heads.text_head)."""
    from hf_tsv.evaluation.heads import text_head as shared

    return shared(encode_texts, class_names, templates, logit_scale=logit_scale)


# ------------------------------------------------------------------------------------------ fallback data


@dataclass
class Images:
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def subset(self, index):
        return Images(self.images[index], self.labels[index], self.class_names)


@dataclass
class Task:
    name: str
    description: str
    source: str
    templates: list[str]
    train: Images
    validation: Images
    test: Images
    hflip: bool = False
    extra: dict = field(default_factory=dict)


FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _grey_to_rgb32(images: np.ndarray) -> np.ndarray:
    if images.shape[1] == 8:
        images = images.repeat(4, axis=1).repeat(4, axis=2)
    elif images.shape[1] == 28:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return np.repeat(images[..., None], 3, axis=-1).astype(np.uint8)


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return _grey_to_rgb32(images), labels


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _grey_to_rgb32((d.images * (255 / 16)).round().astype(np.uint8)), d.target.astype(np.int64)


def _pick(images, labels, classes, rng, n) -> Images:
    keep = np.flatnonzero(np.isin(labels, classes))
    keep = rng.permutation(keep)[:n] if n else keep
    return Images(images[keep], np.searchsorted(np.array(classes), labels[keep]), [])


def fallback_sources(max_pool: int | None, max_train: int | None, max_eval: int | None, seed: int):
    """Development stand-in for hf_tsv_bench.sources: pool = Fashion-MNIST 0-4 + digits 0-4."""
    rng = np.random.default_rng(seed)
    ftr, fytr = _fashion("train")
    fte, fyte = _fashion("test")
    dimg, dlab = _digits()
    order = rng.permutation(len(dlab))
    dtr, dytr = dimg[order[:1200]], dlab[order[:1200]]
    dte, dyte = dimg[order[1200:]], dlab[order[1200:]]
    digit_names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    a = _pick(ftr, fytr, list(range(5)), rng, (max_pool or 4000) // 2)
    b = _pick(dtr, dytr, list(range(5)), rng, (max_pool or 4000) // 2)
    pool = Images(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels + 5]),
                  FASHION[:5] + [f"the digit {n}" for n in digit_names[:5]])
    templates = ["a photo of a {}.", "a picture of a {}.", "a black and white photo of a {}."]

    def task(name, tr, ytr, te, yte, classes, names):
        train = _pick(tr, ytr, classes, rng, max_train or 1000)
        evals = _pick(te, yte, classes, rng, 2 * (max_eval or 300))
        half = len(evals.labels) // 2
        mk = lambda x: Images(x.images, x.labels, names)  # noqa: E731
        return Task(name, name, "fallback", templates, mk(train), mk(evals.subset(slice(0, half))),
                    mk(evals.subset(slice(half, None))))

    tasks = {
        "fashion-hi": task("fashion-hi", ftr, fytr, fte, fyte, list(range(5, 10)), FASHION[5:]),
        "digits-hi": task("digits-hi", dtr, dytr, dte, dyte, list(range(5, 10)),
                          [f"the digit {n}" for n in digit_names[5:]]),
        "fashion": task("fashion", ftr, fytr, fte, fyte, list(range(10)), FASHION),
        "digits": task("digits", dtr, dytr, dte, dyte, list(range(10)), [f"the digit {n}" for n in digit_names]),
    }
    return pool, templates, tasks


def load_data(args):
    """(pool, pool templates, {task name: TaskData}), from ``--data-cache`` when it holds this selection."""
    if not args.data_cache:
        return _load_data(args)
    import hashlib
    import pickle

    key = hashlib.sha256(repr((args.tasks, args.seed, args.max_pool, args.max_train, args.max_eval)).encode())
    path = Path(args.data_cache) / f"data-{key.hexdigest()[:16]}.pkl"
    if path.is_file():
        print(f"[data] from cache {path}")
        return pickle.loads(path.read_bytes())
    data = _load_data(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return data


def _load_data(args):
    """(pool, pool templates, {task name: TaskData}) from hf_tsv_bench.sources, or the fallback."""
    try:
        from hf_tsv_bench import sources
    except ImportError as exc:
        print(f"[data] hf_tsv_bench.sources not importable ({exc}); using the fallback tasks")
        pool, templates, tasks = fallback_sources(args.max_pool, args.max_train, args.max_eval, args.seed)
        names = args.tasks.split(",") if args.tasks else list(tasks)
        return pool, templates, {n: tasks[n] for n in names}
    names = args.tasks.split(",") if args.tasks else list(sources.TASK_NAMES)
    pool = sources.pretraining_data(seed=args.seed, max_images=args.max_pool)
    tasks = {}
    for name in names:
        try:
            tasks[name] = sources.task_data(name, seed=args.seed, max_train=args.max_train, max_eval=args.max_eval)
        except Exception as exc:  # a source that cannot load here: run with the others
            print(f"[data] task {name!r} unavailable: {type(exc).__name__}: {exc}")
    return pool, list(sources.PRETRAIN_TEMPLATES), tasks


# ------------------------------------------------------------------------------------------------- run


def evaluate(model, heads, tasks, split: str, batch_size: int = 256) -> dict[str, float]:
    return {name: bt.accuracy(model, heads[name], getattr(task, split), batch_size) for name, task in tasks.items()}


def mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")


def normalised(acc: dict[str, float], ft: dict[str, float]) -> float:
    return mean(acc[n] / ft[n] for n in acc)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny pool, few steps, 2 layers (about a minute)")
    p.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-pool", type=int, default=None, help="pretraining images (default: all)")
    p.add_argument("--max-train", type=int, default=None, help="training images per task")
    p.add_argument("--max-eval", type=int, default=None, help="validation and test images per task")
    p.add_argument("--hidden", type=int, default=None, help="hidden size (default 128)")
    p.add_argument("--patch", type=int, default=None, help="patch size (default 8)")
    p.add_argument("--layers", type=int, default=None, help="transformer layers (default 4; 2 with --quick)")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument("--pretrain-batch", type=int, default=128)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--pretrain-wd", type=float, default=0.05)
    p.add_argument("--pretrain-scale", type=float, default=50.0, help="logit scale of the pretraining loss")
    p.add_argument("--ft-steps", type=int, default=None)
    p.add_argument("--ft-batch", type=int, default=64)
    p.add_argument("--ft-lr", type=float, default=3e-4)
    p.add_argument("--ft-wd", type=float, default=0.1)
    p.add_argument("--logit-scale", type=float, default=100.0, help="logit scale of the zero-shot heads")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--ta-grid", default=",".join(str(a) for a in TA_GRID))
    p.add_argument("--tsv-grid", default=",".join(str(a) for a in TSV_GRID))
    p.add_argument("--methods", default="avg,ta,ties,tsv-m", help="merge methods (any of hf_tsv.METHODS)")
    p.add_argument("--select-on", default="validation", choices=["validation", "test"],
                   help="split on which α is chosen (the table always reports test)")
    p.add_argument("--save-base", default=None, help="save the pretrained base to this folder")
    p.add_argument("--load-base", default=None, help="skip pretraining: load the base from this folder")
    p.add_argument("--data-cache", default=None, help="folder caching the loaded data (for repeated pilots)")
    p.add_argument("--workdir", default=None, help="where checkpoints go (default: a temporary folder)")
    p.add_argument("--json", default=None, help="write every number to this JSON file")
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    if args.quick:
        args.max_pool = args.max_pool or 2000
        args.max_train = args.max_train or 300
        args.max_eval = args.max_eval or 100
        args.pretrain_steps = args.pretrain_steps or 150
        args.ft_steps = args.ft_steps or 30
        args.layers = args.layers or 2
        args.pretrain_batch = min(args.pretrain_batch, 64)
        args.ft_batch = min(args.ft_batch, 32)
    args.pretrain_steps = args.pretrain_steps or 1500
    args.ft_steps = args.ft_steps or 200
    args.max_eval = args.max_eval or 500
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    pool, pool_templates, tasks = load_data(args)
    timings["data_s"] = time.perf_counter() - t
    print(f"[data] pool {len(pool.labels)} images, {len(pool.class_names)} classes; tasks: "
          + ", ".join(f"{n} ({len(d.train.labels)} train, {len(d.train.class_names)} classes)"
                      for n, d in tasks.items()) + f"  [{timings['data_s']:.1f}s]")

    t = time.perf_counter()
    encoder = MiniLMTextEncoder()
    pool_text = text_head(encoder.encode, pool.class_names, pool_templates, logit_scale=1.0)
    heads = {n: text_head(encoder.encode, d.train.class_names, d.templates, logit_scale=args.logit_scale)
             for n, d in tasks.items()}
    timings["text_s"] = time.perf_counter() - t
    print(f"[text] heads for {len(heads)} tasks + pool  [{timings['text_s']:.1f}s]")

    overrides = {}
    if args.hidden:
        overrides.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden)
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    if args.patch:
        overrides["patch_size"] = args.patch
    augment = bt.NO_AUGMENT if args.no_augment else None
    t = time.perf_counter()
    if args.load_base:
        from transformers import CLIPVisionModelWithProjection

        base = CLIPVisionModelWithProjection.from_pretrained(args.load_base).eval()
        print(f"[pretrain] loaded {args.load_base}")
    else:
        config = bt.bench_vision_config(quick=args.quick, **overrides)
        base = bt.pretrain(pool, pool_text, steps=args.pretrain_steps, batch_size=args.pretrain_batch,
                           lr=args.pretrain_lr, weight_decay=args.pretrain_wd, logit_scale=args.pretrain_scale,
                           seed=args.seed, config=config, augment=augment, log_every=args.log_every)
        if args.save_base:
            base.save_pretrained(args.save_base)
    timings["pretrain_s"] = time.perf_counter() - t
    pool_acc = bt.accuracy(base, pool_text, pool.subset(np.arange(min(len(pool.labels), 2000))))
    cfg = base.config
    print(f"[pretrain] {args.pretrain_steps} steps x {args.pretrain_batch}, lr {args.pretrain_lr}: "
          f"{timings['pretrain_s']:.1f}s; pool train accuracy {pool_acc:.3f}; model {cfg.num_hidden_layers} layers, "
          f"hidden {cfg.hidden_size}, {sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params")

    t = time.perf_counter()
    results: dict[str, dict] = {"zero-shot": {"test": evaluate(base, heads, tasks, "test")}}
    timings["eval_zero_shot_s"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="bench-pilot-") as tmp:
        work = Path(args.workdir or tmp)
        base_dir = work / "base"
        base.save_pretrained(base_dir)
        ft_dirs, ft_test = [], {}
        for i, (name, task) in enumerate(tasks.items()):
            t = time.perf_counter()
            aug = augment or bt.Augment(hflip=bool(getattr(task, "hflip", False)))
            tuned = bt.finetune(base, heads[name], task.train, steps=args.ft_steps, batch_size=args.ft_batch,
                                lr=args.ft_lr, weight_decay=args.ft_wd, seed=args.seed + 100 + i, augment=aug,
                                log=None)
            timings[f"finetune_{name}_s"] = time.perf_counter() - t
            ft_test[name] = bt.accuracy(tuned, heads[name], task.test)
            folder = work / f"ft-{name}"
            tuned.save_pretrained(folder)
            ft_dirs.append(str(folder))
            with torch.no_grad():
                delta = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(tuned.parameters(), base.parameters())))
            print(f"[finetune] {name}: {timings[f'finetune_{name}_s']:.1f}s  zero-shot "
                  f"{results['zero-shot']['test'][name]:.3f} -> fine-tuned {ft_test[name]:.3f}  "
                  f"|task vector| {float(delta):.3f}")
        results["fine-tuned"] = {"test": ft_test}

        t = time.perf_counter()
        sweeps: dict[str, list] = {}
        for method in args.methods.split(","):
            grid = {"ta": args.ta_grid}.get(method, args.tsv_grid)
            alphas = [None] if method == "avg" else [float(a) for a in grid.split(",")]
            sweep = []
            for alpha in alphas:
                merged = hf_tsv.merge(str(base_dir), ft_dirs, method=method, alpha=alpha, device="cpu").to_model()
                sel = evaluate(merged, heads, tasks, args.select_on)
                sweep.append({"alpha": alpha, args.select_on: sel, "mean": mean(sel.values()), "model": merged})
                print(f"[merge] {method} α={alpha}: {args.select_on} mean {mean(sel.values()):.3f}")
            best = max(sweep, key=lambda r: r["mean"])
            test = best[args.select_on] if args.select_on == "test" else evaluate(best["model"], heads, tasks, "test")
            key = method if method == "avg" else f"{method}@best"
            results[key] = {"alpha": best["alpha"], "test": test}
            sweeps[method] = [{k: v for k, v in r.items() if k != "model"} for r in sweep]
        timings["merge_eval_s"] = time.perf_counter() - t

    timings["total_s"] = time.perf_counter() - started
    ft = results["fine-tuned"]["test"]
    names = list(tasks)
    width = max(8, *(len(n) for n in names))
    print()
    print(f"{'method':<12} {'alpha':>5} {'abs':>6} {'norm':>6}  " + " ".join(f"{n[:width]:>{width}}" for n in names))
    for key, row in results.items():
        alpha = row.get("alpha")
        acc = row["test"]
        print(f"{key:<12} {'' if alpha is None else f'{alpha:g}':>5} {100 * mean(acc.values()):6.1f} "
              f"{100 * normalised(acc, ft):6.1f}  " + " ".join(f"{100 * acc[n]:>{width}.1f}" for n in names))
    print()
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    summary = {"args": vars(args), "timings": timings, "results": results, "sweeps": sweeps,
               "pool_train_accuracy": pool_acc,
               "model": {k: getattr(cfg, k) for k in ("patch_size", "hidden_size", "intermediate_size",
                                                     "num_hidden_layers", "num_attention_heads", "projection_dim")},
               "summary": {k: {"abs": mean(r["test"].values()), "norm": normalised(r["test"], ft)}
                           for k, r in results.items()}}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
