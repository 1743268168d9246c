"""The gradio layout of ``boltzformer app``: widgets wired to the plain functions of ``core.py``.

Offline by construction: gradio's analytics are switched off before gradio is imported, the theme
uses system fonts only (no web-font requests), server-side rendering (a Node process) is off, and
the server binds 127.0.0.1 unless told otherwise. Uploads are limited in bytes (``max_file_size``)
and in pixels / voxels (``core.load_upload``); a bad file or input is one message in the status line.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: it reads it at import

import gradio as gr  # noqa: E402

from boltzformer.app.core import (  # noqa: E402
    IMAGE_SUFFIXES,
    LESION_HEADERS,
    MAX_PIXELS,
    MAX_VOXELS,
    VOLUME_SUFFIXES,
    SUMMARY_HEADERS,
    AppImage,
    lesion_rows,
    load_upload,
    preview,
    segment,
    summary_rows,
)
from boltzformer.model import BoltzFormer  # noqa: E402
from boltzformer.predict.engine import Predictor  # noqa: E402

__all__ = ["MAX_FILE_SIZE", "build_app", "launch_app", "offline_theme"]

log = logging.getLogger(__name__)

MAX_FILE_SIZE = "256mb"
KEEP_REQUESTS = 32  # result folders kept on disk (the newest); older ones are deleted
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def offline_theme() -> gr.themes.Base:
    """gradio's default look with system fonts: plain strings are CSS names, never fetched."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def _error(exc: BaseException, upload: str | None = None) -> str:
    """One line for the status box; the upload's temporary folder is left out of file names."""
    text = str(exc).strip() or type(exc).__name__
    if upload:
        text = text.replace(str(Path(upload).parent) + os.sep, "")
    return f"**Error:** {text}"


class _Session:
    """The model, how it predicts (``window_overlap``: a sliding window, as :class:`Predictor`) and a folder
    for result files (the newest ``KEEP_REQUESTS`` requests are kept)."""

    def __init__(self, model: BoltzFormer, workdir: str | Path | None, max_pixels: int, max_voxels: int,
                 window_overlap: float | None = None) -> None:
        self.window_size = Predictor(model, window_overlap=window_overlap).image_size  # the engine checks the overlap
        self.model = model
        self.window_overlap = window_overlap
        self.max_pixels = max_pixels
        self.max_voxels = max_voxels
        self.root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="boltzformer-app-"))
        self.root.mkdir(parents=True, exist_ok=True)
        if workdir is None:  # ours: removed when the session goes or the process exits (Ctrl-C included)
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.root), ignore_errors=True)

    def request_dir(self) -> Path:
        old = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - KEEP_REQUESTS + 1)]:
            shutil.rmtree(p, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.root, prefix="request-"))

    def on_upload(self, upload: str | None) -> tuple[Any, ...]:
        if not upload:
            return None, gr.update(visible=False), gr.update(visible=False), None, ""
        try:
            image = load_upload(upload, max_pixels=self.max_pixels, max_voxels=self.max_voxels)
            shown = preview(image)
        except Exception as exc:  # every failure is one message, never a traceback
            if not isinstance(exc, ValueError):
                log.exception("reading %s", upload)
            return None, gr.update(visible=False), gr.update(visible=False), None, _error(exc, upload)
        if image.is_volume:
            d = image.num_slices
            slider = gr.update(visible=True, minimum=0, maximum=d - 1, value=d // 2, step=1)
            what = f"volume of {d} slices, {image.image.array.shape[1]} x {image.image.array.shape[2]}"
        else:
            slider = gr.update(visible=False, value=0)
            what = f"image {image.image.array.shape[0]} x {image.image.array.shape[1]}"
        return image, slider, gr.update(visible=image.is_volume), shown, f"Loaded **{image.name}**: {what}."

    def on_slice(self, image: AppImage | None, index: float) -> Any:
        if image is None or not image.is_volume:
            return gr.update()
        return preview(image, int(index))

    def on_segment(self, image: AppImage | None, prompts: str, samples: float, threshold: float, seed: float,
                   index: float, context: str, progress=gr.Progress()) -> tuple[Any, ...]:
        empty = ([], [], [], [], [], None)
        if image is None:
            return (*empty, "**Error:** upload an image first (PNG, JPEG, TIFF, NIfTI or DICOM).")
        try:
            predictor = Predictor(self.model, threshold=float(threshold), seed=int(seed), window_overlap=self.window_overlap)
            results = segment(predictor, image, prompts, out_dir=self.request_dir(), samples=int(samples),
                              slice_index=int(index) if image.is_volume else None, context=context,
                              progress=lambda f, msg: progress(f, desc=msg))
        except Exception as exc:
            if not isinstance(exc, ValueError):
                log.exception("segmenting %s", image.name)
            return (*empty, _error(exc))
        where = f" (slice {int(index)})" if image.is_volume else ""
        how = "" if self.window_overlap is None else (
            f" Sampling maps are not drawn with a sliding window (overlap {self.window_overlap:g}).")
        return (
            summary_rows(results),
            [(r.overlay, r.prompt) for r in results],
            [(r.uncertainty, f"{r.prompt}: std of {int(samples)} passes, agreement {r.agreement:.3f}") for r in results],
            [(r.sampling_grid, r.prompt) for r in results if r.sampling_grid is not None],
            lesion_rows(results),
            [str(r.mask_path) for r in results],
            f"Segmented **{image.name}**{where} for {len(results)} prompt(s) with K = {int(samples)} passes.{how}",
        )


def build_app(model: BoltzFormer, *, window_overlap: float | None = None, workdir: str | Path | None = None,
              max_pixels: int = MAX_PIXELS, max_voxels: int = MAX_VOXELS) -> gr.Blocks:
    """The gradio Blocks of the app around a loaded model (launch it with :func:`launch_app`).

    ``window_overlap``: predict as ``evaluate --window-overlap`` does, sliding the model's input window over
    the image at its own resolution with this overlap in [0, 1) (models trained with ``--patch-overlap``);
    no sampling maps are drawn then. None: the whole image, padded and resized to the model's input.

    Raises:
        ValueError: ``window_overlap`` outside [0, 1).
    """
    session = _Session(model.eval(), workdir, max_pixels, max_voxels, window_overlap)
    file_types = list(IMAGE_SUFFIXES + VOLUME_SUFFIXES)
    with gr.Blocks(title="boltzformer", analytics_enabled=False) as demo:
        gr.Markdown("## boltzformer: text-promptable segmentation of small objects")
        if window_overlap is not None:
            gr.Markdown(f"Sliding window: the model's {session.window_size} x {session.window_size} input slides over each "
                        f"image at its own resolution (overlap {window_overlap:g}), as `evaluate --window-overlap`; "
                        "sampling maps are not drawn with a sliding window.", elem_id="window-note")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image (PNG, JPEG, TIFF), volume (NIfTI .nii / .nii.gz), DICOM file or zipped series",
                                 file_types=file_types, type="filepath", elem_id="upload")
                slider = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice")
                context = gr.Radio(["2d", "2.5d"], value="2d", label="Slice context (2.5d: neighbours as RGB)",
                                   visible=False, elem_id="context")
                shown = gr.Image(label="Image", interactive=False, format="png", elem_id="preview", height=320)
                prompts = gr.Textbox(label="Prompts (one per line, or separated by ';')", lines=2,
                                     placeholder="lung nodule in CT scan", elem_id="prompts")
                samples = gr.Slider(2, 16, value=4, step=1, label="Sampling passes K (uncertainty)", elem_id="samples")
                with gr.Row():
                    threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.05, label="Threshold", elem_id="threshold")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown("Upload an image, type a prompt, click Segment.", elem_id="status")
            with gr.Column(scale=2):
                summary = gr.Dataframe(headers=SUMMARY_HEADERS, label="Per prompt", interactive=False, elem_id="summary")
                with gr.Row():
                    overlays = gr.Gallery(label="Mask overlay", format="png", columns=2, height=400, object_fit="contain",
                                          elem_id="overlays")
                    uncertainty = gr.Gallery(label="Uncertainty: pixel-wise std of the K passes (0 black, 0.5 white)",
                                             format="png", columns=2, height=400, object_fit="contain", elem_id="uncertainty")
                sampling = gr.Gallery(label="Sampling maps per decoder layer (distribution | attended tokens)", format="png",
                                      columns=4, height=520, object_fit="contain", elem_id="sampling",
                                      visible=window_overlap is None)  # none with a sliding window
                lesion_table = gr.Dataframe(headers=LESION_HEADERS, label="Lesions", interactive=False, elem_id="lesions")
                downloads = gr.File(label="Masks (PNG for 2D, NIfTI for volumes)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        upload.change(session.on_upload, inputs=upload, outputs=[state, slider, context, shown, status])
        slider.release(session.on_slice, inputs=[state, slider], outputs=shown)
        button.click(session.on_segment, inputs=[state, prompts, samples, threshold, seed, slider, context],
                     outputs=[summary, overlays, uncertainty, sampling, lesion_table, downloads, status],
                     concurrency_limit=1)
    return demo


def launch_app(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
               max_file_size: str | int = MAX_FILE_SIZE) -> str:
    """Serve ``demo`` on ``host:port`` (127.0.0.1 by default; port None: gradio picks a free one from
    7860). Returns the local URL; with ``block`` it serves until interrupted."""
    _, url, _ = demo.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
        max_file_size=max_file_size, theme=offline_theme(), ssr_mode=False, mcp_server=False, pwa=False,
        show_error=False, footer_links=["settings"], quiet=not block, enable_monitoring=False,
    )
    return url
