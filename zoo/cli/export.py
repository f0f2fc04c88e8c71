"""``zoo export``: write a model as an ONNX file (optionally with the postprocessing in the graph), verified
with onnxruntime, or as OpenVINO IR, verified with OpenVINO too."""
from __future__ import annotations

import argparse
import sys

from zoo.cli.predict import add_weights_arguments, create_model_from_args, int_at_least


#: zoo.export.onnx.EXPORT_FORMATS, repeated here so that building the parser imports no torch (a test checks they agree)
FORMATS = ("onnx", "openvino")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX (verified with onnxruntime)",
                       description="Export a model to ONNX: input pixel_values [B, 3, H, W], outputs pred_logits "
                                   "and pred_boxes (or, with --postprocess, the official deploy graph: images + "
                                   "orig_target_sizes -> labels, boxes, scores). See docs/deploy.md.")
    p.add_argument("name", metavar="MODEL", help="model name, name.tag, local-dir:DIR or hf-hub:org/repo")
    add_weights_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx (default) or openvino (IR converted from the verified ONNX graph)")
    p.add_argument("--output", required=True, metavar="PATH",
                   help="file to write, e.g. model.onnx; for --format openvino a folder (model.xml + model.bin)")
    p.add_argument("--size", type=int_at_least(1), nargs=2, default=None, metavar=("H", "W"),
                   help="input height and width, multiples of the model's stride (default: its pretrained_cfg)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size")
    p.add_argument("--dynamic-size", action="store_true", help="any height and width (multiples of the stride)")
    p.add_argument("--postprocess", action="store_true",
                   help="include normalisation and postprocessing: a drop-in for the official deploy scripts")
    p.add_argument("--half", action="store_true", help="float16 weights, inputs and outputs")
    p.add_argument("--opset", type=int_at_least(1), default=None, metavar="N",
                   help="ONNX opset (default: zoo.export.onnx.DEFAULT_OPSET)")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (onnxruntime QDQ) of convolutions and matrix products, calibrated "
                        "on --calibration; the query selection, deformable sampling and heads stay float")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="folder of images like the deployment data, for --int8 (searched recursively)")
    p.add_argument("--calibration-count", type=int_at_least(1), default=None, metavar="N",
                   help="calibrate on the first N images of --calibration (default 64)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison with eager PyTorch")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from zoo.export.api import export
    from zoo.export.onnx import ExportError, read_metadata

    try:
        model = create_model_from_args(args)
        path = export(model, args.output, format=args.format, input_size=args.size,
                      dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size, postprocess=args.postprocess,
                      half=args.half, opset=args.opset, verify=not args.no_verify, int8=args.int8,
                      calibration=args.calibration, calibration_count=args.calibration_count)
    except ExportError as exc:
        print(f"zoo export: error: {exc}", file=sys.stderr)
        return 1
    if args.format == "openvino":
        from zoo.export.openvino import read_openvino_metadata

        meta = read_openvino_metadata(path)
        mib = sum(f.stat().st_size for f in (path, path.with_suffix(".bin"))) / 2**20
    else:
        meta = read_metadata(path)
        mib = path.stat().st_size / 2**20
    h, w = meta["export_size"]
    size = f"{'any height x width' if args.dynamic_size else f'{h}x{w}'}, {'any batch' if args.dynamic_batch else 'batch 1'}"
    print(f"wrote {path} ({mib:.1f} MiB, {meta['dtype']}, {size}"
          f"{', with postprocessing' if args.postprocess else ''})")
    return 0
