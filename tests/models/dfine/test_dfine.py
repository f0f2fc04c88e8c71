"""D-FINE parity with transformers' DFineForObjectDetection both ways (float64, 640x640), and the official
release layout, through the converters zoo ships."""
from __future__ import annotations

import copy

import pytest
import torch

import zoo
from zoo.models.dfine.convert import transformers_to_zoo, zoo_to_official
from zoo.weights.checkpoint import CheckpointError, read_checkpoint

from hf_dfine import calibrate_batch_norms, hf_dfine, output_diffs  # noqa: E402

transformers = pytest.importorskip("transformers")

TOL = 1e-6  # float64, logits and boxes
PARAMS_M = {"dfine_n": 4, "dfine_s": 10, "dfine_m": 19, "dfine_l": 31, "dfine_x": 62}  # official, millions


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """A transformers dfine_n (random weights, calibrated BatchNorm statistics) written by save_pretrained."""
    model = hf_dfine("dfine_n")
    folder = tmp_path_factory.mktemp("hf_dfine_n")
    model.save_pretrained(folder)
    return model, folder / "model.safetensors"


@pytest.fixture(scope="module")
def zoo_model(hf_checkpoint):
    return zoo.create_model("dfine_n", checkpoint_path=hf_checkpoint[1]).eval()


def test_transformers_checkpoint_loads_with_equal_outputs(hf_checkpoint, zoo_model, image):
    hf_model, _ = hf_checkpoint
    assert zoo_model.load_report.format == "transformers-dfine"
    logits_diff, boxes_diff = output_diffs(hf_model, zoo_model, image)
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)


def test_save_pretrained_transformers_loads_in_auto_model(tmp_path, image):
    """zoo -> save_pretrained(format="transformers") -> AutoModelForObjectDetection: the same outputs."""
    torch.manual_seed(3)
    model = zoo.create_model("dfine_n", num_classes=7).eval()
    with torch.no_grad():  # every weight matters: perturb the zero-initialised heads, calibrate the BatchNorms
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(("running_mean", "running_var", "num_points_scale",
                                                                  "decoder.up", "decoder.reg_scale")):
                tensor.add_(torch.randn_like(tensor) * 0.02)
        calibrate_batch_norms(model, lambda: model(torch.rand(1, 3, 320, 320)))
    model.save_pretrained(tmp_path, format="transformers")
    hf_model = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(hf_model).__name__ == "DFineForObjectDetection"
    logits_diff, boxes_diff = output_diffs(hf_model, model, image)
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)
    with torch.no_grad():
        assert model(image)["pred_logits"].std() > 0.1  # a comparison of non-trivial outputs


def test_official_release_layout_loads(zoo_model, tmp_path, image):
    """An official D-FINE / DEIM release file ({'ema': {'module': sd}} with the 640x640 anchors stored) loads
    through checkpoint_path with the same outputs, and other input sizes work (the anchors are not kept)."""
    official = zoo_to_official(zoo_model.state_dict())
    cells = 40 * 40 + 20 * 20  # dfine_n: strides 16 and 32 at 640x640
    official["decoder.anchors"] = torch.zeros(1, cells, 4)
    official["decoder.valid_mask"] = torch.ones(1, cells, 1, dtype=torch.bool)
    assert "encoder.input_proj.0.conv.weight" in official and "decoder.decoder.up" in official
    path = tmp_path / "dfine_hgnetv2_n_coco.pth"
    torch.save({"ema": {"module": official, "updates": torch.tensor(1)}, "model": official}, path)
    model = zoo.create_model("dfine_n", checkpoint_path=path).eval()
    assert model.load_report.format == "official-dfine"
    with torch.no_grad():  # the same weights in the same model: equal to the bit (at 320x480, not the stored 640)
        x = image[..., :320, :480]
        ref, out = zoo_model(x), model(x)
        assert torch.equal(ref["pred_logits"], out["pred_logits"]) and torch.equal(ref["pred_boxes"], out["pred_boxes"])


def test_k_proj_equal_to_v_proj_is_refused(hf_checkpoint, tmp_path):
    """Hub files converted before huggingface/transformers#40257 have k_proj == v_proj: refused, with the fix."""
    state = read_checkpoint(hf_checkpoint[1])
    transformers_to_zoo(state)  # the good file converts
    bad = dict(state)
    bad["model.decoder.layers.1.self_attn.k_proj.weight"] = bad["model.decoder.layers.1.self_attn.v_proj.weight"]
    with pytest.raises(CheckpointError, match="40253"):
        transformers_to_zoo(bad)


def test_official_key_names():
    """Zoo keys are the official DFINE keys (Peterande/D-FINE), but for the encoder's input projections."""
    keys = set(zoo.create_model("dfine_n").state_dict())
    expected = {"backbone.stem.stem1.conv.weight", "backbone.stem.stem1.lab.scale",
                "backbone.stages.2.blocks.0.layers.0.conv1.bn.running_var", "encoder.input_proj.0.0.weight",
                "encoder.encoder.0.layers.0.self_attn.in_proj_weight", "encoder.fpn_blocks.0.cv2.0.bottlenecks.0.conv1.conv.weight",
                "encoder.downsample_convs.0.0.cv2.conv.weight", "decoder.decoder.layers.0.gateway.gate.weight",
                "decoder.decoder.layers.0.cross_attn.num_points_scale", "decoder.decoder.lqe_layers.2.reg_conf.layers.1.bias",
                "decoder.enc_output.proj.weight", "decoder.pre_bbox_head.layers.2.weight", "decoder.up",
                "decoder.reg_scale", "decoder.dec_bbox_head.2.layers.2.weight", "decoder.denoising_class_embed.weight"}
    assert expected <= keys, sorted(expected - keys)
    assert not any(k.startswith("decoder.input_proj") for k in keys)  # Identity at width 128, as officially


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_counts_match_the_official_figures(name):
    with torch.device("meta"):
        model = zoo.create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PARAMS_M[name]) <= 0.05 * PARAMS_M[name] + 0.5, params


def test_manifest_entries():
    """ustc-community's transformers files: COCO (N..X), Objects365 -> COCO (S..X) with coco80 labels, and Objects365
    (S..X) with its 365 categories at their ids (366 outputs, as the official ``num_classes: 366``,
    ``remap_mscoco_category: False``); Apache-2.0, the published AP; coco is each size's default tag."""
    from zoo.weights.manifest import load_manifest

    entries = {k: e for k, e in load_manifest().entries.items() if k.startswith("dfine_")}
    assert sorted(entries) == sorted([f"dfine_{s}.coco" for s in "nsmlx"] + [f"dfine_{s}.obj2coco" for s in "smlx"]
                                     + [f"dfine_{s}.obj365" for s in "smlx"])
    aps = {"dfine_n.coco": 42.8, "dfine_s.coco": 48.5, "dfine_m.coco": 52.3, "dfine_l.coco": 54.0,
           "dfine_x.coco": 55.8, "dfine_s.obj2coco": 50.7, "dfine_m.obj2coco": 55.1, "dfine_l.obj2coco": 57.3,
           "dfine_x.obj2coco": 59.3, "dfine_s.obj365": 31.0, "dfine_m.obj365": 38.6, "dfine_l.obj365": 40.6,
           "dfine_x.obj365": 49.5}  # Objects365 val (L: its first 5000 images, the only figure for that file)
    for name, e in entries.items():
        objects365 = name.endswith(".obj365")
        assert (e.format, e.license) == ("transformers-dfine", "apache-2.0")
        assert (e.num_classes, e.label_set) == ((366, "objects365") if objects365 else (80, "coco80"))
        assert e.hub.repo_id.startswith("ustc-community/dfine-") and e.metric("box_ap") == aps[name]
        assert len(e.label_names) == e.num_classes
    assert load_manifest().default_tag("dfine_s") == "coco"
    names = entries["dfine_s.obj365"].label_names
    assert (names[0], names[1], names[2], names[365]) == ("N/A", "Person", "Sneakers", "Table Tennis")
    assert len(set(names)) == 366


def test_deploy_and_onnx_export_with_postprocess(zoo_model, tmp_path):
    """deploy() keeps the outputs; the postprocess=True ONNX graph is verified by zoo.export with onnxruntime
    (the raw graph goes through the same exporter; both were checked at dynamic sizes by hand, see the report)."""
    pytest.importorskip("onnxruntime")
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model = copy.deepcopy(zoo_model).double()  # float64: float32 rounding can swap near-tied top-k queries
    with torch.no_grad():
        ref, fused = model(x), copy.deepcopy(model).deploy()(x)
    torch.testing.assert_close(fused["pred_logits"], ref["pred_logits"], rtol=0, atol=1e-9)
    torch.testing.assert_close(fused["pred_boxes"], ref["pred_boxes"], rtol=0, atol=1e-9)
    path = zoo.export(zoo_model, tmp_path / "dfine_n.onnx", input_size=320, postprocess=True)
    assert path.is_file()
