"""The page at /, in headless Chromium: draw a known digit on the canvas and read the
prediction the page shows; press "sample" for a generator and see a grid drawn.

The digit is a real test sample of the digits data, replayed as strokes one grid cell wide
along each row's run of inked cells (intensity >= 8 of 16).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.serving_support import ThreadServer, cached, digits_data

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SAMPLE = 0  # index into the digits test split


pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs /usr/bin/chromium (Debian package; make test installs it: scripts/system-deps)",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadServer, Path]]:
    root = tmp_path_factory.getbasetemp()
    digits, generator = cached("digits", root), cached("generator", root)
    with ThreadServer([str(digits), f"gen={generator}"]) as server:
        yield server, digits


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


def _strokes(image: np.ndarray, cell: float) -> list[tuple[float, float, float]]:
    """(y, x_start, x_end) in canvas pixels: one stroke per run of inked cells in a row."""
    strokes = []
    for r, row in enumerate(image >= 8):
        c = 0
        while c < len(row):
            if row[c]:
                end = c
                while end + 1 < len(row) and row[end + 1]:
                    end += 1
                strokes.append(((r + 0.5) * cell, (c + 0.5) * cell, (end + 0.5) * cell))
                c = end + 1
            else:
                c += 1
    return strokes


def test_drawn_digit_is_predicted(served, browser) -> None:
    server, digits = served
    data = digits_data()
    image, label = data.test.x[SAMPLE][0] * 16, str(data.test.y[SAMPLE])

    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#classifier:not(.hidden)")
    box = page.locator("#pad").bounding_box()
    assert box is not None
    cell = box["width"] / 8
    strokes = _strokes(image, cell)
    for i, (y, x0, x1) in enumerate(strokes):
        page.mouse.move(box["x"] + x0, box["y"] + y)
        page.mouse.down()
        page.mouse.move(box["x"] + x1, box["y"] + y, steps=4)
        if i < len(strokes) - 1:
            page.mouse.up()
            continue
        with page.expect_request("**/predict") as request:  # the prediction after the last one
            page.mouse.up()
    sent = json.loads(request.value.post_data or "{}")
    page.wait_for_function("document.getElementById('prediction').dataset.label !== ''")
    shown = page.locator("#prediction").get_attribute("data-label")

    # what the page sent is the drawn digit: the inked cells of the sample
    pixels = np.asarray(sent["inputs"], dtype=np.float32)
    assert sent["normalised"] is True and pixels.shape == (8, 8)
    assert np.array_equal(pixels > 0.5, image >= 8), (np.round(pixels, 2), image)
    # and what it shows is what ONNX Runtime says for those pixels: the sample's label
    session = ort.InferenceSession(str(digits), providers=["CPUExecutionProvider"])
    logits = session.run(["output"], {"input": pixels.reshape(1, 1, 8, 8)})[0][0]
    assert shown == str(int(logits.argmax())) == label
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    cell_text = page.locator(f'#probabilities tr[data-label="{label}"] td.p').inner_text()
    assert abs(float(cell_text) - probabilities.max()) < 1e-3
    assert page.locator("#probabilities tr").count() == 10

    page.click("#clear")
    assert page.locator("#prediction").get_attribute("data-label") == ""
    page.close()


def test_generator_page_draws_a_grid_of_samples(served, browser) -> None:
    server, _ = served
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#model option[value='gen']", state="attached")
    page.select_option("#model", "gen")
    page.wait_for_selector("#generator:not(.hidden)")
    assert page.locator("#classifier").is_hidden()
    page.click("#sample")
    page.wait_for_function("document.getElementById('samples').dataset.samples === '16'")
    spread = page.evaluate(
        """() => {
            const c = document.getElementById('samples');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set();
            for (let i = 0; i < d.length; i += 4) seen.add(d[i]);
            return seen.size;
        }"""
    )
    assert spread > 20  # grey levels of real samples, not a blank canvas
    assert page.locator("#error").inner_text() == ""
    page.close()
