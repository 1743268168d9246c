"""Command line: ``boltzformer train | evaluate | predict | explain | convert | demo | import | app | ablate``.

This module builds the parser from the sub-commands' modules (:mod:`.train`: train, demo, ablate;
:mod:`.evaluate`; :mod:`.predict`: predict, explain; :mod:`.convert`; :mod:`.data`: import; :mod:`.app`)
and dispatches. Every command checks its inputs first; a bad input is one line on stderr naming the
file or argument, exit code 2, and nothing half-written (outputs go to a temporary name, then are renamed).
Building the parser imports no torch: each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from boltzformer.cli.app import add_app_parser, cmd_app
from boltzformer.cli.convert import add_convert_parser, cmd_convert
from boltzformer.cli.data import add_import_parser, cmd_import
from boltzformer.cli.evaluate import add_evaluate_parser, cmd_evaluate
from boltzformer.cli.predict import add_explain_parser, add_predict_parser, cmd_explain, cmd_predict
from boltzformer.cli.train import (  # noqa: F401 (_FREEZABLE: the train parser's --freeze choices, tested)
    DEMO_STEPS,
    _FREEZABLE,
    add_ablate_parser,
    add_demo_parser,
    add_train_parser,
    cmd_ablate,
    cmd_demo,
    cmd_train,
)

__all__ = ["DEMO_STEPS", "main"]

HANDLERS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "convert": cmd_convert, "explain": cmd_explain,
            "demo": cmd_demo, "import": cmd_import, "app": cmd_app, "ablate": cmd_ablate}


class _VersionAction(argparse.Action):
    """``--version``: the package version and, from a git checkout, the commit (imported only when asked)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version (and git commit) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from boltzformer.provenance import git_commit, package_version

        commit = git_commit()
        print(f"boltzformer {package_version()}" + (f" (commit {commit})" if commit else ""))
        parser.exit(0)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boltzformer", description="Text-promptable segmentation of small objects (BoltzFormer).")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train_parser, add_evaluate_parser, add_predict_parser, add_explain_parser, add_convert_parser,
                add_demo_parser, add_import_parser, add_ablate_parser, add_app_parser):  # the order of --help
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command != "import":
        from boltzformer.runtime import keep_freed_memory

        keep_freed_memory()  # large tensors reuse freed memory instead of fresh zeroed pages (runtime.py)
    try:
        return HANDLERS[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, ImportError) as exc:
        print(f"boltzformer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
