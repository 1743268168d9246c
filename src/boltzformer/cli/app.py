"""``boltzformer app``: the browser page (gradio, offline) on a checkpoint."""

from __future__ import annotations

import argparse

from boltzformer.cli.args import WINDOW_OVERLAP_HELP, check_overlap

__all__ = ["add_app_parser", "cmd_app"]


def add_app_parser(sub) -> None:
    """``app``: serve the browser page."""
    p = sub.add_parser("app", help="a browser page to segment uploaded images and volumes (gradio, offline)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--port", type=int, default=None, help="default: the first free port from 7860")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--window-overlap", type=float, default=None, metavar="OVERLAP", help=WINDOW_OVERLAP_HELP)


def cmd_app(args: argparse.Namespace) -> int:
    import boltzformer.app

    check_overlap(args.window_overlap)  # before the checkpoint is read
    boltzformer.app.serve(args.checkpoint, host=args.host, port=args.port, window_overlap=args.window_overlap)
    return 0
