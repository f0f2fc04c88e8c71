"""zoo.data.formats: one synthetic set written as COCO, Roboflow, YOLO and VOC reads back to the same boxes and
gets the same AP from zoo.evaluate (the demo model finds the shapes); each reader's details and every problem
``zoo data check`` reports, with its file and line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.cli import main
from zoo.data.formats import (DataError, check, convert, detect_format, list_splits, load_split, read_split)
from zoo.data.synthetic import SHAPE_CLASSES, make_synthetic_coco

pytestmark = pytest.mark.usefixtures("single_thread")


def _coco_set(root: Path, num_train: int = 3, num_val: int = 8) -> Path:
    make_synthetic_coco(root, "train", num_train, seed=0, image_size=96)
    make_synthetic_coco(root, "val", num_val, seed=1, image_size=96)
    return root


def _write_roboflow(coco_root: Path, dst: Path) -> Path:
    """A Roboflow COCO export of a zoo-layout set: train/ and valid/ with _annotations.coco.json beside the
    images, category 0 the dataset's name (supercategory of the classes, no annotations)."""
    for split, folder in (("train", "train"), ("val", "valid")):
        data = json.loads((coco_root / f"{split}.json").read_text())
        shutil.copytree(coco_root / split, dst / folder)
        data["categories"] = [{"id": 0, "name": "shapes", "supercategory": "none"}] + [
            dict(c, supercategory="shapes") for c in data["categories"]]
        (dst / folder / "_annotations.coco.json").write_text(json.dumps(data))
    return dst


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    coco = _coco_set(root / "coco")
    sets = {"coco": coco, "roboflow": _write_roboflow(coco, root / "roboflow")}
    for fmt in ("yolo", "voc"):
        assert convert(coco, root / fmt, fmt) == []
        sets[fmt] = root / fmt
    return sets


def _boxes(data) -> dict[str, np.ndarray]:
    """Boxes and classes by image file name (formats number images differently)."""
    names = {im["id"]: Path(im["file_name"]).name.removeprefix("val_").removeprefix("train_")
             for im in data.coco["images"]}
    out: dict[str, list] = {n: [] for n in names.values()}
    for ann in data.coco["annotations"]:
        out[names[ann["image_id"]]].append([ann["category_id"], ann["iscrowd"], *ann["bbox"]])
    return {k: np.array(sorted(v)).reshape(-1, 6) for k, v in out.items()}


def test_every_layout_reads_back_the_same_boxes(layouts):
    for fmt, root in layouts.items():
        assert detect_format(root) == fmt
        assert sorted(list_splits(root)) == (["train", "valid"] if fmt == "roboflow" else ["train", "val"])
        for split in ("train", "val"):
            ref, data = load_split(layouts["coco"], split), load_split(root, split)
            assert data.class_names == list(SHAPE_CLASSES), fmt  # Roboflow's placeholder category is gone
            a, b = _boxes(ref), _boxes(data)
            assert a.keys() == b.keys() and all(len(a[k]) == len(b[k]) for k in a), fmt
            # YOLO keeps 6 decimals of the normalised coordinates: 96 px * 5e-7; VOC keeps the pixel values
            tolerance = {"yolo": 96 * 5e-7 * 2}.get(fmt, 1e-9)
            assert max(np.abs(a[k] - b[k]).max(initial=0) for k in a) <= tolerance, fmt


def test_every_layout_gets_the_same_ap(layouts, tmp_path):
    """zoo.evaluate of the demo model on the val split of each layout (zoo eval --data for VOC) gives one AP."""
    import zoo

    model = zoo.create_model("rtdetr_mobilenetv3_small.shapes_demo")
    # the YOLO set again with its classes listed in another order: labels are matched to the model's by name
    reordered = tmp_path / "reordered"
    shutil.copytree(layouts["yolo"], reordered)
    (reordered / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [square, triangle, circle]\n")
    for label in (reordered / "labels").rglob("*.txt"):
        lines = [line.split() for line in label.read_text().splitlines()]
        label.write_text("".join(" ".join([str((int(c) + 2) % 3), *rest]) + "\n" for c, *rest in lines))
    layouts = {**layouts, "reordered": reordered}
    results = {fmt: zoo.evaluate(model, data=layouts[fmt], split="val", num_workers=0, progress=False,
                                 verbose=False).metrics for fmt in ("coco", "roboflow", "yolo", "reordered")}
    out = tmp_path / "eval"
    assert main(["eval", "rtdetr_mobilenetv3_small.shapes_demo", "--data", str(layouts["voc"]), "--workers", "0",
                 "--out", str(out)]) == 0
    results["voc"] = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0.3 < results["coco"]["AP"] < 1.0, results["coco"]
    for fmt, metrics in results.items():
        assert metrics == pytest.approx(results["coco"], abs=1e-9), fmt
    per_class = json.loads((out / "metrics.json").read_text())["per_class"]
    assert list(per_class) == list(SHAPE_CLASSES)
    assert sum(c["instances"] for c in per_class.values()) == len(read_split(layouts["voc"], "val").coco["annotations"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # zoo eval writes the metrics and says how to get the plots
        return
    for name in ("pr_curve.png", "confusion_matrix.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_round_trips_through_every_format(layouts, tmp_path):
    """coco -> yolo -> voc -> coco keeps every box (to YOLO's precision) and the class order."""
    convert(layouts["yolo"], tmp_path / "voc", "voc")
    convert(tmp_path / "voc", tmp_path / "coco", "coco")
    for split in ("train", "val"):
        a, b = _boxes(load_split(layouts["coco"], split)), _boxes(load_split(tmp_path / "coco", split))
        assert max(np.abs(a[k] - b[k]).max(initial=0) for k in a) <= 1e-4
        assert load_split(tmp_path / "coco", split).class_names == list(SHAPE_CLASSES)


def test_convert_refuses_a_folder_that_is_not_empty(layouts, tmp_path):
    (tmp_path / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        convert(layouts["coco"], tmp_path, "yolo")
    with pytest.raises(ValueError, match="cannot write format 'kitti'"):
        convert(layouts["coco"], tmp_path / "new", "kitti")


def test_unknown_folder_says_what_was_looked_for(tmp_path):
    with pytest.raises(ValueError) as info:
        detect_format(tmp_path)
    for expected in ("data.yaml", "Annotations/ + JPEGImages/", "_annotations.coco.json", "<split>.json + <split>/"):
        assert expected in str(info.value)


def _yolo(root: Path, yaml_text: str, images: dict[str, str | None]) -> Path:
    """images: relative path under root -> label text (None: no label file)."""
    from PIL import Image

    root.mkdir(parents=True)
    (root / "data.yaml").write_text(yaml_text)
    for rel, labels in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (100, 50)).save(path)
        if labels is not None:
            label = root / rel.replace("images", "labels", 1)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.with_suffix(".txt").write_text(labels)
    return root


def test_yolo_names_dict_path_key_and_images_without_labels(tmp_path):
    root = _yolo(tmp_path / "set", "path: sub\ntrain: images/train\nval: images/train\nnames: {0: cat, 1: dog}\n",
                 {"sub/images/train/a.jpg": "1 0.5 0.5 0.2 0.4\n\n0 0.25 0.5 0.5 1.0\n",
                  "sub/images/train/b.png": None})
    data = load_split(root, "train")
    assert data.class_names == ["cat", "dog"] and data.image_dir == root / "sub"
    assert [im["file_name"] for im in data.coco["images"]] == ["images/train/a.jpg", "images/train/b.png"]
    boxes = [(a["image_id"], a["category_id"], a["bbox"]) for a in data.coco["annotations"]]
    assert boxes == [(1, 2, pytest.approx([40, 15, 20, 20])), (1, 1, pytest.approx([0, 0, 50, 50]))]


def test_yolo_roboflow_export_paths(tmp_path):
    """Roboflow's YOLO exports write ``train: ../train/images`` next to train/ in the same folder as data.yaml."""
    root = _yolo(tmp_path / "rf", "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['cat']\n",
                 {"train/images/a.jpg": "0 0.5 0.5 0.2 0.2\n", "valid/images/b.jpg": "0 0.5 0.5 0.4 0.2\n"})
    assert sorted(list_splits(root)) == ["train", "val"]
    assert [a["bbox"] for a in load_split(root, "val").coco["annotations"]] == [pytest.approx([30, 20, 40, 10])]
    with pytest.raises(ValueError, match="nc is 2 but 'names' has 1"):
        (root / "data.yaml").write_text("train: ../train/images\nnc: 2\nnames: ['cat']\n")
        read_split(root, "train")


def test_check_reports_every_problem_with_file_and_line(tmp_path):
    root = _yolo(tmp_path / "set", "train: images/train\nnames: [cat, dog]\n", {
        "images/train/a.jpg": "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n1 0.5 0.5\nx 0.5 0.5 0.1 0.1\n"
                              "0 0.95 0.5 0.2 0.2\n1 0.5 0.5 0 0.1\n",
        "images/train/c.jpg": "0 0.5 0.5 0.2 0.2\n"})
    (root / "labels/train/orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "images/train/c.jpg").write_bytes(b"not an image")
    from PIL import Image
    Image.new("RGB", (10, 10)).save(root / "images/train/a.png")  # a.jpg and a.png share labels/train/a.txt
    labels = str(root / "labels/train/a.txt")
    found = [(p.file, p.line, p.message.split(" (")[0].split(":")[0]) for p in check(read_split(root, "train"))]
    assert found == [
        (str(root / "images/train/a.png"), None, "duplicate image"),
        (str(root / "images/train/c.jpg"), None, "missing or unreadable image"),
        (labels, 2, "class id 5 out of range"),
        (labels, 3, "malformed line"),
        (labels, 4, "malformed line 'x 0.5 0.5 0.1 0.1'"),
        (labels, 5, "box [x 85, y 20, w 20, h 10]"),
        (labels, 6, "zero-area box [x 50, y 22.5, w 0, h 5]"),
        (str(root / "labels/train/orphan.txt"), None, "label file without an image"),
    ]
    with pytest.raises(DataError, match=r"8 errors in the 'train' split, the first: .*a.png.*zoo data check"):
        load_split(root, "train")


def test_zoo_data_check_and_zoo_train_refuse_errors(tmp_path, capsys):
    root = _yolo(tmp_path / "set", "train: images/train\nval: images/train\nnames: [cat]\n",
                 {"images/train/a.jpg": "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n"})
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'labels/train/a.txt'}:2: error: class id 3 out of range" in out and "train: 1 images" in out
    assert main(["train", "rtdetr_mobilenetv3_small", "--data", str(root), "--output", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "class id 3 out of range" in err and f"zoo data check {root}" in err
    assert main(["eval", "rtdetr_mobilenetv3_small.shapes_demo", "--data", str(root), "--split", "train"]) == 1
    assert f"zoo data check {root}" in capsys.readouterr().err
    (root / "labels/train/a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert main(["data", "check", str(root)]) == 0


def test_voc_corners_are_one_based_inclusive_and_difficult_is_ignored(tmp_path):
    from PIL import Image

    from zoo.engine.evaluate import evaluate_detections

    root = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "JPEGImages/img1.jpg")
    (root / "ImageSets/Main/val.txt").write_text("img1\n")
    (root / "Annotations/img1.xml").write_text(
        "<annotation><filename>img1.jpg</filename><size><width>40</width><height>30</height><depth>3</depth></size>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        "<ymax>20</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>21</xmin><ymin>11</ymin><xmax>40</xmax>"
        "<ymax>30</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>21</xmin><ymin>1</ymin><xmax>30</xmax>"
        "<ymax>9</ymax></bndbox></object></annotation>")
    data = load_split(root, "val")
    assert data.class_names == ["cat", "dog"]  # sorted names found in Annotations/ (no labels.txt)
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in data.coco["annotations"]] == [
        (2, [0, 0, 10, 20], 0), (1, [20, 10, 20, 20], 1), (1, [20, 0, 10, 9], 1)]
    dog = {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 20], "score": 0.9}
    on_difficult = {"image_id": 1, "category_id": 1, "bbox": [20, 10, 20, 20], "score": 0.95}
    metrics = evaluate_detections(data.to_coco(), [dog, on_difficult], verbose=False)
    # the detected difficult cat is no false positive, the missed one no miss: only the dog counts
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["AR100"] == pytest.approx(1.0, abs=1e-12)
    convert(root, tmp_path / "again", "voc")
    xml = (tmp_path / "again/Annotations/img1.xml").read_text()
    assert "<xmin>21</xmin>" in xml and "<difficult>1</difficult>" in xml
    assert (tmp_path / "again/labels.txt").read_text() == "cat\ndog\n"


@pytest.mark.parametrize("first, supercategory, annotated, dropped", [
    ("shapes", "shapes", False, True),     # Roboflow's placeholder
    ("shapes", "shapes", True, False),     # category 0 has annotations: a real class
    ("shapes", "other", False, False),     # not the supercategory of the others: a real class
])
def test_roboflow_placeholder_is_dropped_only_when_it_is_one(layouts, tmp_path, first, supercategory, annotated,
                                                             dropped):
    root = tmp_path / "rf"
    shutil.copytree(layouts["roboflow"], root)
    for folder in ("train", "valid"):
        path = root / folder / "_annotations.coco.json"
        data = json.loads(path.read_text())
        data["categories"] = [{"id": 0, "name": first, "supercategory": "none"}] + [
            dict(c, supercategory=supercategory) for c in data["categories"][1:]]
        if annotated and folder == "valid":
            data["annotations"][0]["category_id"] = 0
        path.write_text(json.dumps(data))
    for split in ("train", "val"):
        names = read_split(root, split).class_names
        assert names == (list(SHAPE_CLASSES) if dropped else [first, *SHAPE_CLASSES]), split


def test_zoo_data_stats_and_convert(layouts, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["data", "stats", str(layouts["yolo"]), "--out", str(tmp_path / "stats.png")]) == 0
    out = capsys.readouterr().out
    val = read_split(layouts["coco"], "val").coco["annotations"]
    circles = sum(a["category_id"] == 1 for a in val)
    assert f"val: 8 images (0 without objects), {len(val)} boxes" in out
    assert any(line.split()[:2] == ["circle", str(circles)] for line in out.split("val:")[1].splitlines()), out
    assert (tmp_path / "stats.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["data", "convert", str(layouts["roboflow"]), str(tmp_path / "y"), "--to", "yolo"]) == 0
    assert detect_format(tmp_path / "y") == "yolo" and "roboflow -> yolo" in capsys.readouterr().out


def test_relative_dataset_paths(layouts, tmp_path, monkeypatch):
    """A dataset named by a relative path reads the same (the yaml's folder is not applied twice)."""
    for fmt in ("yolo", "voc", "coco", "roboflow"):
        shutil.copytree(layouts[fmt], tmp_path / fmt)
    monkeypatch.chdir(tmp_path)
    for fmt in ("yolo", "voc", "coco", "roboflow"):
        data = load_split(fmt, "val")
        assert len(data.coco["images"]) == 8 and check(data) == [], fmt


def test_coco_json_problems_are_reported_not_dropped(layouts, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(layouts["coco"], root)
    data = json.loads((root / "val.json").read_text())
    anns = data["annotations"]
    anns[1]["id"] = anns[0]["id"]                       # duplicate annotation id
    anns[2]["category_id"] = 9                          # no such category
    anns[3]["bbox"] = [1, 2, 3]                         # not 4 numbers
    anns[4].pop("id")                                   # no id
    data["images"].append(dict(data["images"][0]))      # duplicate image id
    data["images"].append({"id": 99, "file_name": "gone.png", "width": 96, "height": 96})
    (root / "val.json").write_text(json.dumps(data))
    messages = [p.message for p in check(read_split(root, "val"))]
    for expected in (f"duplicate annotation id {anns[0]['id']}", "has category id 9, not one of the categories [1, 2, 3]",
                     "bbox [1, 2, 3] is not 4 numbers", "annotation without an integer 'id'",
                     f"duplicate image id {data['images'][0]['id']}", "image not found"):
        assert any(expected in m for m in messages), (expected, messages)
    assert len(messages) == 6
    assert main(["data", "check", str(root), "--split", "train"]) == 0  # the other split is fine
