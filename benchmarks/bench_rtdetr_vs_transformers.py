"""zoo RT-DETR vs transformers' RTDetrForObjectDetection: the same architecture, the same weights, one run.

For each model, transformers' RTDetrForObjectDetection is configured from the zoo model's config (PResNet ->
RTDetrResNetConfig; a timm backbone -> TimmBackboneConfig, transformers' way of hosting timm models), its weights are
randomised, saved with ``save_pretrained`` and loaded into zoo through ``zoo.weights.checkpoint`` (strict). Outputs are compared
(max |diff| of logits and boxes), then the forward pass is timed, interleaving zoo, zoo after ``deploy(channels_last=True)``
(RepVGG fused, channels-last memory) and transformers in every iteration so that load on the machine hits all three alike.

    python benchmarks/bench_rtdetr_vs_transformers.py                 # CPU, 640x640, batch 1
    python benchmarks/bench_rtdetr_vs_transformers.py --device cuda --iters 100
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

import zoo
from zoo.cli.benchmark import latency_stats, machine_state, measure_latency
from zoo.weights.checkpoint import load_checkpoint
from zoo.engine.device import resolve_device

MODELS = ("rtdetr_r18vd", "rtdetr_mobilenetv3_large", "rtdetr_mobilenetv3_small")
#: PResNet depth -> (blocks per stage, block type, stage widths) in transformers' RTDetrResNetConfig terms
PRESNET = {18: ([2, 2, 2, 2], "basic", [64, 128, 256, 512]), 34: ([3, 4, 6, 3], "basic", [64, 128, 256, 512]),
           50: ([3, 4, 6, 3], "bottleneck", [256, 512, 1024, 2048]),
           101: ([3, 4, 23, 3], "bottleneck", [256, 512, 1024, 2048])}


def transformers_config(model: torch.nn.Module):
    """An RTDetrConfig describing the zoo RT-DETR ``model``."""
    from transformers import RTDetrConfig, RTDetrResNetConfig, TimmBackboneConfig

    args = model.config["model_args"]
    backbone, encoder, decoder = args["backbone"], args["encoder"], args["decoder"]
    if backbone["name"] == "presnet":
        depths, layer_type, widths = PRESNET[backbone["depth"]]
        backbone_config = RTDetrResNetConfig(depths=depths, layer_type=layer_type, hidden_sizes=widths,
                                             out_features=["stage2", "stage3", "stage4"])
        freeze = bool(backbone.get("freeze_norm", False))
    elif backbone["name"] == "timm":
        backbone_config = TimmBackboneConfig(backbone=backbone["model_name"], freeze_batch_norm_2d=False,
                                             out_indices=model.backbone.feature_indices)
        freeze = False  # zoo keeps timm's BatchNormAct2d; transformers' frozen BN would drop its activation
    else:
        raise ValueError(f"no transformers equivalent for backbone {backbone['name']!r}")
    if decoder.get("eval_idx", -1) not in (-1, decoder["num_decoder_layers"] - 1):
        raise ValueError("transformers' RT-DETR always returns the last decoder layer (eval_idx -1)")
    return RTDetrConfig(
        backbone_config=backbone_config, freeze_backbone_batch_norms=freeze,
        encoder_in_channels=list(model.backbone.out_channels), encoder_hidden_dim=encoder["hidden_dim"],
        encoder_ffn_dim=encoder["dim_feedforward"], hidden_expansion=encoder["expansion"],
        decoder_in_channels=[encoder["hidden_dim"]] * 3, decoder_layers=decoder["num_decoder_layers"],
        num_queries=decoder["num_queries"], num_labels=model.num_classes,
    )


def twin_models(name: str, seed: int = 0):
    """(zoo model, transformers model) holding the same randomised weights."""
    from transformers import RTDetrForObjectDetection

    model = zoo.create_model(name).eval()
    torch.manual_seed(seed)
    hf = RTDetrForObjectDetection(transformers_config(model)).eval()
    with torch.no_grad():  # default init zeroes heads and leaves BN trivial: make every weight matter
        for key, tensor in hf.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(("running_mean", "running_var")):
                tensor.add_(torch.randn_like(tensor) * 0.02)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        model.load_report = load_checkpoint(model, Path(folder) / "model.safetensors")
    return model, hf


def bench(name: str, device: torch.device, size: int, batch_size: int, warmup: int, iters: int) -> dict:
    model, hf = twin_models(name)
    deployed = copy.deepcopy(model).deploy(channels_last=True)
    model, deployed, hf = model.to(device), deployed.to(device), hf.to(device)
    x = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        ref, out, fused = hf(pixel_values=x), model(x), deployed(x)
        diff = {"logits": (ref.logits - out["pred_logits"]).abs().max().item(),
                "boxes": (ref.pred_boxes - out["pred_boxes"]).abs().max().item(),
                "deploy_logits": (out["pred_logits"] - fused["pred_logits"]).abs().max().item()}
        x_cl = x.contiguous(memory_format=torch.channels_last)
        runs = {"zoo": lambda: model(x), "zoo_deploy": lambda: deployed(x_cl), "transformers": lambda: hf(pixel_values=x)}
        for fn in runs.values():
            measure_latency(fn, device, warmup, 0)
        times = {key: [] for key in runs}
        for _ in range(iters):  # interleaved, one timed call each per round
            for key, fn in runs.items():
                times[key] += measure_latency(fn, device, 0, 1)
    stats = {key: latency_stats(t, batch_size) for key, t in times.items()}
    return {"model": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "max_abs_diff": diff,
            **{f"{key}_median_ms": s["median_ms"] for key, s in stats.items()},
            **{f"{key}_p90_ms": s["p90_ms"] for key, s in stats.items()}}


def table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| model | params | zoo ms | zoo deploy ms | transformers ms | transformers / zoo | transformers / zoo "
             "deploy | max abs diff (logits, boxes) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hf = r["transformers_median_ms"]
        lines.append(f"| {r['model']} | {r['params_m']:.1f}M | {r['zoo_median_ms']:.1f} | "
                     f"{r['zoo_deploy_median_ms']:.1f} | {hf:.1f} | {hf / r['zoo_median_ms']:.2f}x | {hf / r['zoo_deploy_median_ms']:.2f}x | "
                     f"{r['max_abs_diff']['logits']:.1e}, {r['max_abs_diff']['boxes']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    before = machine_state(torch.get_num_threads()) if device.type == "cpu" else None
    rows = [bench(name, device, args.size, args.batch_size, args.warmup, args.iters) for name in args.models]
    import transformers

    header = (f"Forward pass, median of {args.iters} interleaved runs after {args.warmup} warm-up; {device}"
              f"{f' ({torch.get_num_threads()} threads)' if device.type == 'cpu' else ''}, batch {args.batch_size}, "
              f"{args.size}x{args.size}; torch {torch.__version__}, transformers {transformers.__version__}. "
              "Ratios > 1: zoo is faster.")
    print(table(rows, header))
    if before:  # the state of the CPU beside its numbers: load average, measured conv peak, a warning when busy
        after = machine_state(torch.get_num_threads(), running=torch.get_num_threads())
        print(f"before: {before['text']}\nafter: {after['text']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
