"""Commands about model weights: fetch, check, convert."""
from __future__ import annotations

import sys
from pathlib import Path

from ..config import PROJECT_ROOT, load_config
from .common import ExitCode


def cmd_fetch_weights(args) -> int:
    from ..weights import fetch_isnet

    config = load_config(args.config)
    try:
        path = fetch_isnet(config.paths.segmentation_weights, tarball=Path(args.tarball) if args.tarball else None)
    except (RuntimeError, OSError) as exc:
        print(f"could not obtain the IS-Net weights: {exc}", file=sys.stderr)
        print("segmentation will fall back to OpenCV GrabCut until they are present", file=sys.stderr)
        return ExitCode.FAILED
    print(f"IS-Net weights ready: {path}")
    return 0


def cmd_check_weights(args) -> int:
    from ..models.preflight import check

    report = check(load_config(args.config), PROJECT_ROOT)
    print(report.text(), file=sys.stdout if report.ok else sys.stderr)
    return ExitCode.OK if report.ok else ExitCode.WEIGHTS_MISSING


def cmd_convert_isnet(args) -> int:
    from ..config import resolve_path
    from ..models.isnet_onnx_import import convert_onnx_to_checkpoint

    config = load_config(args.config)
    source = resolve_path(args.onnx) if args.onnx else config.paths.segmentation_weights
    target = resolve_path(args.output or config.segmentation.isnet_checkpoint)
    if not source.is_file():
        print(f"{source} does not exist; run `make weights` first", file=sys.stderr)
        return ExitCode.WEIGHTS_MISSING
    convert_onnx_to_checkpoint(source, target)
    print(f"IS-Net PyTorch checkpoint written: {target} (weights from {source})")
    return 0


def register(sub) -> None:
    weights = sub.add_parser("fetch-weights", help="obtain IS-Net from the npm package @imgly/background-removal-data")
    weights.add_argument("--tarball", help="use an already downloaded package .tgz instead of `npm pack`")
    weights.set_defaults(func=cmd_fetch_weights)
    check_weights = sub.add_parser("check-weights", help="list the weights the configured backends need; exit 3 "
                                                         "when any is missing (nothing is downloaded)")
    check_weights.set_defaults(func=cmd_check_weights)
    convert = sub.add_parser("convert-isnet", help="write a PyTorch IS-Net checkpoint (isnet_torch) from the ONNX weights")
    convert.add_argument("--onnx", help="ONNX file (default: segmentation.weights_path)")
    convert.add_argument("--output", help="checkpoint to write (default: segmentation.isnet_checkpoint)")
    convert.set_defaults(func=cmd_convert_isnet)
