"""``boltzformer import``: a BiomedParse or MSD / nnU-Net dataset to a dataset folder, or a folder validated."""

from __future__ import annotations

import argparse

__all__ = ["add_import_parser", "cmd_import"]


def add_import_parser(sub) -> None:
    """``import``: convert or validate a dataset folder."""
    p = sub.add_parser("import", help="convert a BiomedParse or MSD / nnU-Net dataset to a dataset folder, or validate a folder")
    p.add_argument("source", help="dataset folder to read")
    p.add_argument("--out", default=None, help="dataset folder to write (omit to validate a boltzformer folder in place)")
    p.add_argument("--kind", default="auto", choices=["auto", "folder", "biomedparse", "msd"])
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--link", action="store_true", help="symlink the images instead of copying them (folder, biomedparse)")
    p.add_argument("--site", default=None, help="msd: anatomical site in the prompts (default: from dataset.json)")
    p.add_argument("--modality", default=None, help="msd: modality (default: from dataset.json)")
    p.add_argument("--channel", type=int, default=0, help="msd: channel of multi-channel cases")
    p.add_argument("--slice-step", type=int, default=1, help="msd: keep every k-th slice that holds a label")
    p.add_argument("--negative-ratio", type=float, default=0.25, help="msd: slices without the label per positive slice")
    p.add_argument("--rename", action="append", default=[], metavar="LABEL=NAME", help='msd: e.g. --rename "cancer=liver tumor"')
    p.add_argument("--seed", type=int, default=0, help="msd: seed of the negative slices")
    p.add_argument("--window", default=None, help="msd: CT window name (liver, lung, ...) or CENTER,WIDTH in HU (default: from the labels)")


def cmd_import(args: argparse.Namespace) -> int:
    from boltzformer.data.importers import import_dataset

    renames = dict(pair.split("=", 1) for pair in args.rename if "=" in pair)
    if len(renames) != len(args.rename):
        raise ValueError(f"--rename expects LABEL=NAME, got {args.rename}")
    summary = import_dataset(args.source, args.out, kind=args.kind, overwrite=args.overwrite, link=args.link,
                             site=args.site, modality=args.modality, channel=args.channel, slice_step=args.slice_step,
                             negative_ratio=args.negative_ratio, label_names=renames, seed=args.seed,
                             window=tuple(args.window.split(",")) if args.window and "," in args.window else args.window)
    print(summary.format())
    return 0
