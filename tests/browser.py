"""Helpers for the browser tests: an app on tiny checkpoints served on a free port, and a
headless Chromium page (Debian's chromium driven by Playwright). One server per test module.
"""

from __future__ import annotations

import json
import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from mmdemo import ui
from mmdemo.app.registry import CheckpointRegistry
from mmdemo.datasets.sortofclevr import LABELS, task_spec, write_examples
from mmdemo.model.checkpoint import save_checkpoint
from mmdemo.model.classifier import build_model

from .conftest import tiny_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


def make_app(root: Path, other: list[str] | None = None) -> ui.App:
    """Shipped 'sort-of-clevr' (tiny, the 12 Sort-of-CLEVR labels, with examples and its task) and,
    with ``other``, a second shipped checkpoint 'other' with those labels (every visitor sees it;
    a visitor's own checkpoints live in their owner folder, tests/ui/test_browser_security.py)."""
    torch.manual_seed(0)
    path = save_checkpoint(build_model(tiny_config(labels=LABELS)), root / "shipped" / "sort-of-clevr")
    write_examples(path / "examples")
    config = json.loads((path / "config.json").read_text())
    config["task"] = task_spec()
    (path / "config.json").write_text(json.dumps(config))
    if other:
        save_checkpoint(build_model(tiny_config(labels=other)), root / "shipped" / "other")
    return ui.App(CheckpointRegistry(root / "mine", root / "shipped"), work_dir=str(root / "work"))


@contextmanager
def serve(app: ui.App):
    demo = ui.create_demo(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(max_size=16).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True
    )
    try:
        yield demo.local_url
    finally:
        demo.close()


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def blocks_layout(page) -> dict:
    """Boxes of the page's labelled blocks (components with a label, and plots), the document
    width, and the pairs of those blocks that overlap (neither inside the other)."""
    return page.evaluate(
        """() => {
      const blocks = [...document.querySelectorAll('.block')].filter(b =>
        b.offsetParent !== null && b.getBoundingClientRect().height > 0 &&
        b.querySelector('[data-testid="block-label"], [data-testid="block-info"], label, .js-plotly-plot'));
      const boxes = blocks.map(b => {
        const r = b.getBoundingClientRect();
        return {id: b.id || b.querySelector('[data-testid="block-label"], [data-testid="block-info"]')?.innerText?.slice(0, 40) || b.className.slice(0, 30),
                left: r.left, right: r.right, top: r.top + window.scrollY, bottom: r.bottom + window.scrollY};
      });
      const overlaps = [];
      for (let i = 0; i < blocks.length; i++) for (let j = i + 1; j < blocks.length; j++) {
        if (blocks[i].contains(blocks[j]) || blocks[j].contains(blocks[i])) continue;
        const a = boxes[i], b = boxes[j];
        const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
        const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
        if (w > 2 && h > 2) overlaps.push([a.id, b.id]);
      }
      return {width: document.documentElement.scrollWidth, boxes, overlaps};
    }"""
    )
