"""``boltzformer app``: a gradio page to segment an uploaded image with text prompts, offline.

``core`` holds the plain functions (file + prompts + options -> results), importable without gradio;
``ui`` holds the gradio layout (imported only by :func:`serve` and the browser test).

Example:
    >>> from boltzformer.app import load_upload, segment, summary_rows  # doctest: +SKIP
    >>> image = load_upload("scan.png")  # doctest: +SKIP
    >>> results = segment(Predictor(model), image, "lung nodule in CT scan", out_dir="out")  # doctest: +SKIP
    >>> results = segment(Predictor(model, window_overlap=0.5), image, "nodule", out_dir="out")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from boltzformer.app.core import (
    AppImage,
    PromptResult,
    lesion_rows,
    load_upload,
    parse_prompts,
    segment,
    summary_rows,
)

__all__ = ["AppImage", "PromptResult", "lesion_rows", "load_upload", "parse_prompts", "segment", "serve", "summary_rows"]


def serve(checkpoint: str | Path, *, host: str = "127.0.0.1", port: int | None = None,
          window_overlap: float | None = None) -> None:
    """Load ``checkpoint`` and serve the app on ``host:port`` until interrupted; ``window_overlap``: slide
    the model's input window over each image at its own resolution (see :func:`~boltzformer.app.ui.build_app`)."""
    from boltzformer.model.checkpoint import load_checkpoint

    model = load_checkpoint(checkpoint)  # a bad checkpoint fails before gradio is imported
    from boltzformer.app.ui import build_app, launch_app

    try:
        launch_app(build_app(model, window_overlap=window_overlap), host=host, port=port, block=True)
    except OSError as exc:  # gradio: "Cannot find empty port ..."
        raise ValueError(f"--host {host} --port {port}: cannot serve there ({exc})") from None
