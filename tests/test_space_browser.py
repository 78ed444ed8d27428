"""The Space in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`, nothing downloaded)
clicks Merge and sees the STI heatmap, the model card and the download. ``HF_TSV_UPDATE_SCREENSHOT=1`` rewrites
docs/space_screenshot.png from this run."""

from __future__ import annotations

import io
import os
import urllib.request
import zipfile

import pytest
from space_helpers import CHROMEDRIVER, CHROMIUM, ROOT, Browser, import_space, running_space

from hf_tsv.synthetic import make_checkpoints

# In the default run (~15 s): the only test of the page's own wiring (clicks, heatmap, card, download link).
pytestmark = [pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")]

PNG = b"\x89PNG\r\n\x1a\n"
CARD = ("const c = document.querySelector('#merge-card');"
        "return c && c.innerText.includes('Singular Task Interference') ? c.innerText : null;")
HEATMAP = ("const i = document.querySelector('#merge-heatmap img');"
           "return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight, i.src] : null;")
DOWNLOAD = ("const a = [...document.querySelectorAll('#merge-download a')].find(a => a.href.includes('.zip'));"
            "return a ? a.href : null;")


def _fetch(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        return response.read()


def test_clicking_merge_shows_the_heatmap_card_and_download(tmp_path):
    _, space_core = import_space()
    library = tmp_path / "library"
    make_checkpoints(library, preset="tiny", num_tasks=3, seed=7)
    settings = space_core.Settings(library=library, threads=1)
    with running_space(settings, spares=1) as served:
        browser = Browser(tmp_path / "chromium-profile")
        try:
            browser.get(served.url)
            browser.wait_for("return !!document.querySelector('#merge-button')", 60, "the Merge button")
            # the page opens with the library's `base` and every other library model chosen
            chosen = browser.script("return document.querySelector('#models-library').innerText")
            assert all(name in chosen for name in ("task_00", "task_01", "task_02")), chosen
            browser.click("#merge-button")

            card = browser.wait_for(CARD, 150, "the model card")
            width, height, src = browser.wait_for(HEATMAP, 30, "the STI heatmap")
            summary = browser.script("return document.querySelector('#merge-summary').innerText")
            download = browser.wait_for(DOWNLOAD, 30, "the download link")

            assert "TSV-M (Task Singular Vectors) merge of 3 models" in summary and "total STI" in summary
            for text in ("Merged models", "task_02", "Scaling factor α = 1.0", "Usage", "CLIPVisionModel"):
                assert text in card, text
            assert width > 300 and height > 150
            heatmap = _fetch(src)
            files = zipfile.ZipFile(io.BytesIO(_fetch(download)))
            assert heatmap.startswith(PNG) and heatmap == files.read("hf-tsv-tsv-m-merge/sti_heatmap.png")
            assert "hf-tsv-tsv-m-merge/model.safetensors" in files.namelist()

            page_height = browser.script("return document.documentElement.scrollHeight")
            browser.set_window(1440, max(900, min(int(page_height) + 140, 2000)))
            browser.script("window.scrollTo(0, 0)")
            shot = browser.screenshot()
        finally:
            browser.quit()
    assert shot.startswith(PNG) and len(shot) > 20_000
    (tmp_path / "space_screenshot.png").write_bytes(shot)
    if os.environ.get("HF_TSV_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs" / "space_screenshot.png").write_bytes(shot)


COMPARE_TAB = ("const t = [...document.querySelectorAll('button[role=tab]')]"
               ".find(b => b.innerText.trim() === 'Compare'); if (t) t.click();"
               "return !!t && !!document.querySelector('#compare-button');")
COMPARE_ROWS = ("const t = document.querySelector('#compare-table table');"
                "return t ? [...t.querySelectorAll('tbody tr')].map(r => r.cells[0].innerText.trim()) : [];")


def test_compare_tab_fills_the_table_for_each_chosen_method(tmp_path):
    """The Compare tab on the tiny library: every method of the registry ticked by default, one table row each,
    the STI plot, and the chosen method offered to keep. ``HF_TSV_UPDATE_SCREENSHOT=1`` rewrites
    docs/space_compare.png."""
    from hf_tsv.methods import METHODS

    _, space_core = import_space()
    library = tmp_path / "library"
    make_checkpoints(library, preset="tiny", num_tasks=3, seed=7)
    titles = [m.label for m in METHODS.values()]
    with running_space(space_core.Settings(library=library, threads=1), spares=1) as served:
        browser = Browser(tmp_path / "chromium-profile")
        try:
            browser.get(served.url)
            browser.wait_for(COMPARE_TAB, 60, "the Compare tab")
            ticked = browser.script("return [...document.querySelectorAll('#compare-methods input:checked')]"
                                    ".map(i => i.parentElement.innerText.trim())")
            assert len(ticked) == len(METHODS) and "TSV-M (Task Singular Vectors)" in ticked, ticked
            browser.click("#compare-button")
            rows = browser.wait_for(f"const r = (() => {{{COMPARE_ROWS}}})(); return r.length === {len(titles)} ? r "
                                    ": null;", 150, "a table row for each method")
            assert rows == titles
            width, height, _ = browser.wait_for(HEATMAP.replace("#merge-heatmap", "#compare-sti"), 30, "the STI plot")
            assert width > 300 and height > 150
            progress = browser.script("return document.querySelector('#compare-progress').innerText")
            assert progress.count("✅") == len(METHODS) and "waiting" not in progress
            choice = browser.script("return document.querySelector('#compare-choice input').value")
            assert choice == titles[0]
            page_height = browser.script("return document.documentElement.scrollHeight")
            browser.set_window(1440, max(900, min(int(page_height) + 140, 2200)))
            browser.script("window.scrollTo(0, 0)")
            shot = browser.screenshot()
        finally:
            browser.quit()
    assert shot.startswith(PNG) and len(shot) > 20_000
    (tmp_path / "space_compare.png").write_bytes(shot)
    if os.environ.get("HF_TSV_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs" / "space_compare.png").write_bytes(shot)
