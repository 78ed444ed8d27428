"""Helpers for the Space tests: start the app in this process, a tiny evaluation task spec for
``HF_TSV_SPACE_TASKS``, and a minimal WebDriver client for Chromium. Heavy imports stay inside functions."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SPACES_APP = ROOT / "spaces_app"
TESTS = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def import_space():
    """``(app, space_core)`` from spaces_app/ (which imports its siblings by name, as it does on a Space)."""
    if str(SPACES_APP) not in sys.path:
        sys.path.insert(0, str(SPACES_APP))
    import app
    import space_core

    return app, space_core


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_eval_tasks(folder: Path, names: list[str], *, classes: int = 4, examples: int = 20, seed: int = 0,
                    head_dim: int = 32) -> Path:
    """A task spec for ``HF_TSV_SPACE_TASKS`` over tiny data: per task, a ``DatasetDict`` saved to disk (a
    ``test`` split of random 32×32 images, an ``image`` column and a ``label`` ClassLabel), a random
    ``(classes, head_dim)`` head in one ``heads.safetensors``, and a CLIPImageProcessor (size 32) folder.
    Returns the spec's path (``tasks.json``, with paths relative to it)."""
    import datasets
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessor

    from hf_tsv.evaluation import TaskHead, save_heads

    folder.mkdir(parents=True, exist_ok=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder / "processor")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    class_names = [f"class_{c}" for c in range(classes)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    heads, tasks = {}, []
    for name in names:
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(examples)]
        labels = rng.integers(0, classes, examples).tolist()
        data = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        datasets.DatasetDict({"test": data}).save_to_disk(str(folder / f"data_{name}"))
        heads[name] = TaskHead(torch.randn(classes, head_dim, generator=generator), class_names)
        tasks.append({"name": name, "dataset": f"disk:data_{name}", "split": "test", "head": "heads.safetensors"})
    save_heads(folder / "heads.safetensors", heads)
    spec = folder / "tasks.json"
    spec.write_text(json.dumps({"image_processor": "processor", "tasks": tasks}, indent=2))
    return spec


@contextmanager
def running_space(settings, *, script=None, spares: int = 1, env: dict | None = None):
    """Serve the Space on 127.0.0.1 (a free port) from a thread of this process; yields ``.url``, ``.demo``,
    ``.workspace``. ``spares`` workers are started ahead (with ``env`` added to theirs) and none after a job:
    each start imports torch and transformers, so a test starts only the workers it uses."""
    from unittest import mock

    app, space_core = import_space()
    workspace = space_core.Workspace()
    with mock.patch.dict(os.environ, env or {}):
        pool = space_core.WorkerPool(settings, workspace, script=script, spares=spares, refill=False)
    demo = app.build_demo(settings, workspace=workspace, pool=pool)
    port = free_port()
    try:
        app.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", demo=demo, workspace=workspace)
    finally:
        demo.close()
        pool.close()
        workspace.close()


def zip_contents(path: str | os.PathLike) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# --------------------------------------------------------------------------------------------------------------
# A minimal W3C WebDriver client (chromedriver speaks HTTP + JSON; no browser download, no extra package)
# --------------------------------------------------------------------------------------------------------------

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element identifier
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--no-proxy-server", "--hide-scrollbars", "--window-size=1440,1400"]


class WebDriverError(RuntimeError):
    pass


class Browser:
    """Headless Chromium driven through /usr/bin/chromedriver."""

    def __init__(self, user_data_dir: Path):
        self.port = free_port()
        self.log = open(user_data_dir.parent / "chromedriver.log", "wb")  # noqa: SIM115 - closed in quit()
        self.driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={self.port}"], stdout=self.log,
                                       stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.session = None
        try:
            self._wait_ready()
            options = {"binary": str(CHROMIUM), "args": [*CHROMIUM_ARGS, f"--user-data-dir={user_data_dir}"]}
            value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options}}})
            self.session = value["sessionId"]
        except BaseException:
            self.quit()
            raise

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._call("GET", "/status").get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError("chromedriver did not start")

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=120) as response:
                payload = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise WebDriverError(exc.read().decode("utf-8", "replace")[:2000]) from None
        return payload.get("value")

    def _session(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._session("POST", "/url", {"url": url})

    def script(self, source: str, *args):
        return self._session("POST", "/execute/sync", {"script": source, "args": list(args)})

    def find(self, css: str) -> str:
        return self._session("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def click(self, css: str) -> None:
        self._session("POST", f"/element/{self.find(css)}/click", {})

    def wait_for(self, source: str, timeout: float = 90.0, what: str = "the page"):
        """Poll a script until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.script(source)
            except WebDriverError:
                last = None
            if last:
                return last
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}")

    def set_window(self, width: int, height: int) -> None:
        self._session("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._session("GET", "/screenshot"))

    def quit(self) -> None:
        if self.session is not None:
            try:
                self._session("DELETE", "")
            except (OSError, WebDriverError):
                pass
            self.session = None
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait()
        self.log.close()
