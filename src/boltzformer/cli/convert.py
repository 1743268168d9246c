"""``boltzformer convert``: pretrained weights (SAM2, LiteMedSAM, X-Decoder, official BoltzFormer,
BiomedParse v2) into a preset, written as a boltzformer checkpoint with the load report beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from boltzformer.cli.args import parse_overrides

__all__ = ["add_convert_parser", "cmd_convert"]


def add_convert_parser(sub) -> None:
    """``convert``: foreign weights into a preset."""
    p = sub.add_parser("convert", help="load pretrained weights (SAM2, LiteMedSAM, X-Decoder, official BoltzFormer, BiomedParse v2) into a preset")
    p.add_argument("--preset", required=True, help="tiny | lite | hiera-s | hiera-bp | focal-l | biomedparse-v2")
    p.add_argument("--weights", required=True, help=".pt / .pth / .ckpt / .safetensors file")
    p.add_argument("--out", required=True, help="boltzformer checkpoint to write (use it with train --init)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model setting")


def cmd_convert(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from boltzformer.io.atomic import check_output, write_json_atomic
    from boltzformer.model.checkpoint import save_checkpoint
    from boltzformer.model import build_model
    from boltzformer.model.weights import load_pretrained

    out = Path(args.out)
    check_output(out, kind="file")
    check_output(out.with_name(out.name + ".load.json"), kind="file")
    if not Path(args.weights).exists():
        raise FileNotFoundError(f"--weights {args.weights} does not exist")
    if not Path(args.weights).is_file():
        raise ValueError(f"--weights {args.weights} is a folder; expected a .pt / .pth / .ckpt / .safetensors file")
    model = build_model(args.preset, **parse_overrides(args.set))
    report = load_pretrained(model, args.weights)
    save_checkpoint(model, out)
    write_json_atomic(asdict(report), out.with_name(out.name + ".load.json"))
    print(report.summary())
    for name, items in (("unused", report.unused), ("missing", report.missing)):
        reasons: dict[str, int] = {}
        for why in items.values():
            reasons[why] = reasons.get(why, 0) + 1
        for why, n in sorted(reasons.items(), key=lambda x: -x[1]):
            print(f"  {name}: {n} ({why})")
    print(f"checkpoint: {out} (key lists in {out.name}.load.json)")
    return 0
