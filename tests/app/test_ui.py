"""``boltzformer app`` in a real browser: Debian's chromium driven by playwright (never ``playwright install``).

Uploads a PNG from the shared data, types a prompt, clicks Segment, waits for the overlay and the
tables, and checks that no request left 127.0.0.1. Run as a script to take the README screenshot
with a trained checkpoint::

    python tests/app/test_ui.py --checkpoint run/best.ckpt --image scan.png --prompt "..." --out docs/app.png

(``--window-overlap O`` for a model trained on native-resolution patches, as ``boltzformer app``.)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1"}
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # as tests/conftest.py
PROMPT = "lower-grade glioma in brain FLAIR MRI"
LGG = ("lgg_brain_flair", "images", "TCGA_CS_4941_19960909_11.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    path = os.environ.get("BOLTZFORMER_CHROMIUM", CHROMIUM)
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"chromium not found at {path}: install Debian's chromium (apt-get install chromium; "
                    f".ci/run does it) or set BOLTZFORMER_CHROMIUM; never run `playwright install`")
    return path


def drive(url: str, image: Path, prompt: str, *, bad_file: Path | None = None, screenshot: Path | None = None,
          timeout_ms: int = 30_000) -> dict:
    """Open the app, (upload ``bad_file`` and read the error), upload ``image``, segment ``prompt``;
    return what the page shows and every request URL."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("websocket", lambda ws: requests.append(ws.url))
            page.goto(url, timeout=timeout_ms)
            page.locator("#segment").wait_for(timeout=timeout_ms)
            upload = page.locator("#upload input[type=file]")
            error = None
            if bad_file is not None:
                upload.set_input_files(str(bad_file))
                page.locator("#status").get_by_text("Error").wait_for(timeout=timeout_ms)
                error = page.locator("#status").inner_text()
                page.locator("#upload button[aria-label='Clear']").click()
            upload.set_input_files(str(image))
            page.locator("#status").get_by_text("Loaded").wait_for(timeout=timeout_ms)
            page.locator("#prompts textarea").fill(prompt)
            page.locator("#segment").click()
            page.locator("#status").get_by_text("Segmented").wait_for(timeout=timeout_ms)
            page.locator("#overlays img").first.wait_for(timeout=timeout_ms)
            shown = {
                "status": page.locator("#status").inner_text(),
                "summary": page.locator("#summary").inner_text(),
                "lesions": page.locator("#lesions").inner_text(),
                "overlays": page.locator("#overlays img").count(),
                "overlay_loaded": page.locator("#overlays img").first.evaluate("img => img.complete && img.naturalWidth"),
                "downloads": page.locator("#downloads").inner_text(),
                "error": error,
                "requests": requests,
            }
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=True)
            return shown
        finally:
            browser.close()


def _small_target_model(image: np.ndarray, prompt: str):
    """A random tiny model with its output bias lowered so that about 1% of ``image`` is above 0.5
    (as in test_core.py: real targets are small, and an image-sized blob takes seconds to label)."""
    from boltzformer import Predictor, build_model

    torch.manual_seed(0)
    model = build_model("tiny", image_size=64, num_layers=3, num_queries=4).eval()
    prob = Predictor(model).predict_proba(image, prompt).astype(np.float64)
    with torch.no_grad():
        model.pigma.conv.bias -= 2 * float(np.quantile(np.log(prob / (1 - prob)), 0.99))
    return model


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    from boltzformer.app.ui import build_app, launch_app
    from boltzformer.io.medical import load_image

    image = load_image(SHARED_DATA.joinpath(*LGG)).array.astype(np.uint8) if SHARED_DATA.is_dir() else np.zeros((64, 64), np.uint8)
    demo = build_app(_small_target_model(image, PROMPT), workdir=tmp_path_factory.mktemp("app"))
    url = launch_app(demo, port=_free_port(), block=False)
    assert demo.max_file_size == 256 * 1024**2  # gradio refuses larger uploads (HTTP 413)
    yield url
    demo.close()


def test_segment_in_the_browser_stays_on_localhost(app_url, shared_data, tmp_path):
    assert urlparse(app_url).hostname == "127.0.0.1"  # bound to localhost by default
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    shown = drive(app_url, shared_data.joinpath(*LGG), f"{PROMPT}; tumour", bad_file=bad)

    # a bad file: one message naming it, no traceback, no temporary folder
    assert "broken.png" in shown["error"] and "could not be read as an image" in shown["error"]
    assert "Traceback" not in shown["error"] and "/tmp" not in shown["error"]

    assert "Segmented" in shown["status"] and "2 prompt(s)" in shown["status"]
    assert shown["overlays"] == 2 and shown["overlay_loaded"] > 0
    assert "lower-grade glioma in brain FLAIR MRI" in shown["summary"] and "tumour" in shown["summary"]
    assert "n/a" in shown["summary"]  # no existence head in this model
    assert shown["lesions"].count(PROMPT) >= 1  # the lesion table is filled
    assert shown["downloads"].count("_mask") == 2 and ".png" in shown["downloads"]
    remote = [u for u in shown["requests"] if urlparse(u).scheme not in ("data", "blob")
              and urlparse(u).hostname not in LOCAL_HOSTS]
    assert shown["requests"] and not remote, f"requests left 127.0.0.1: {remote}"


if __name__ == "__main__":  # the README screenshot, with a trained checkpoint
    import argparse

    from boltzformer.app.ui import build_app, launch_app
    from boltzformer.model.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--out", default="docs/app.png", type=Path)
    ap.add_argument("--window-overlap", type=float, default=None, metavar="OVERLAP",
                    help="slide the model's input window over the image with this overlap in [0, 1) (as `boltzformer app`)")
    args = ap.parse_args()
    demo = build_app(load_checkpoint(args.checkpoint), window_overlap=args.window_overlap)
    url = launch_app(demo, port=_free_port(), block=False)
    try:
        shown = drive(url, args.image, args.prompt, screenshot=args.out)
    finally:
        demo.close()
    print(shown["summary"], shown["lesions"], sep="\n")
    print(f"{args.out}; requests not on 127.0.0.1: {[u for u in shown['requests'] if urlparse(u).hostname not in LOCAL_HOSTS]}")
