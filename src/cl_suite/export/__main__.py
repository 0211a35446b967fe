"""``python -m cl_suite.export <run dir or .pt> [--format state_dict|torchvision|timm] [--out FILE]
[--checkpoint last|best|step_<n>] [--trust-target MODULE]``: write the run's encoder as a backbone-only file (see cl_suite.export)."""
from __future__ import annotations

import argparse
import sys

from cl_suite.errors import UserError
from cl_suite.export import FORMATS, export_backbone, sidecar_path


def argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cl_suite.export`` (tests/test_docs.py parses the documented ones)."""
    parser = argparse.ArgumentParser(prog="python -m cl_suite.export", description=__doc__)
    parser.add_argument("source",
                        help="a run dir of train.py (its checkpoints/<checkpoint>.pt) or a checkpoint .pt file")
    parser.add_argument("--format", default="state_dict", choices=FORMATS, dest="fmt",
                        help="state_dict: the suite's backbone module + header (cl_suite.export.load_backbone, "
                             "evaluate.py); torchvision / timm: the library model's own state dict "
                             "(default: state_dict)")
    parser.add_argument("--out", help="the file to write (default: <run>/backbone_<format>.pt); its header goes to "
                                      "the .json beside it")
    parser.add_argument("--checkpoint", help="with a run dir: which of its checkpoints/ (last, best, step_<n>; "
                                             "default last)")
    parser.add_argument("--trust-target", action="append", default=[], dest="trusted", metavar="MODULE",
                        help="a module of your own method (the run's method._target_), imported to check that its "
                             "representation is the backbone's; repeatable")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser()
    args = parser.parse_args(argv)
    try:
        out, header = export_backbone(args.source, args.fmt, args.out, args.checkpoint, tuple(args.trusted))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    source = header["source"]
    kind = str(header["backbone"].get("_target_")).rsplit(".", 1)[-1]
    print(f"{out}  ({args.fmt}: {kind}, {header['num_features']}-d features; step {source['step']} of "
          f"{source['checkpoint']})")
    print(f"header: {sidecar_path(out)}")
    inputs = header["input"]
    print(f"input: {inputs['size']}x{inputs['size']} images, normalised with mean {inputs['mean']}, "
          f"std {inputs['std']}")
    # The header's line names the file beside it; from here, the file is where it was written.
    print("load:  " + header["load"].replace(f'"{out.name}"', f'"{out}"'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
