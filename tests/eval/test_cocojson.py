"""COCO JSON files read straight into columns (detlab.eval.cocojson): one clear error per malformed input, the
same arrays as the json.load + dict path, and the same figures as from memory and as pycocotools."""

import copy
import json

import numpy as np
import pytest

from detlab.eval import (
    coco_detections_from_file,
    coco_detections_from_results,
    coco_ground_truth_from_dict,
    coco_ground_truth_from_file,
    evaluate_coco_files,
    read_coco_annotations,
)
from detlab.eval.simulate import simulate_detections, synthetic_coco_ground_truth

from coco_oracle import detlab_eval, pycocotools_eval

TOL = 1e-9  # as test_coco_exact: pycocotools' figures, equal in practice


@pytest.fixture
def data():
    gt = synthetic_coco_ground_truth(20, 5, seed=0)
    return gt, simulate_detections(gt, seed=0)


def _write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _error(read, path) -> str:
    with pytest.raises(ValueError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def _huge(r):
    r[3]["image_id"] = 2**70


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda r: '[{"image_id": 1,', "malformed JSON in the results file"),
        (lambda r: r[2].update(score=float("nan")), "near '"),  # json.dump writes NaN, which is no JSON
        (lambda r: {"image_id": 1}, "a COCO results file is a JSON list of detections"),
        (lambda r: r.__setitem__(2, 3), "detection #2: expected `object`"),
        (lambda r: r[2].pop("score"), "detection #2: field 'score' is missing"),
        (lambda r: r[2].update(score="high"), "detection #2: field 'score': expected `float`"),
        (lambda r: r[2].update(score="nan"), "detection #2: field 'score' must be a finite number"),
        (lambda r: r[7].update(bbox=[1.0, 2.0, 3.0]), "detection #7: field 'bbox': expected `array` of length 4"),
        (lambda r: r[7].update(bbox=[1.0, 2.0, 3.0, 4.0, 5.0]), "detection #7: field 'bbox'"),
        (lambda r: r[7].update(bbox=[1.0, 2.0, 3.0, "x"]), "detection #7: field 'bbox' item 3"),
        (lambda r: r[7].update(bbox=[1.0, 2.0, 3.0, "inf"]), "detection #7: field 'bbox' must be a list of 4 finite"),
        (lambda r: r[3].update(image_id=1.5), "detection #3: field 'image_id': expected `int`"),
        (_huge, "detection #3: field 'image_id': expected `int` <="),
        (lambda r: r[3].update(image_id=99999), "field 'image_id': 1 detection(s) refer to ids absent"),
        (lambda r: r[5].update(category_id=4), "the first is detection #5"),  # ids are 1, 3, 5, ...
    ],
)
def test_bad_results_file_names_file_entry_and_field(tmp_path, data, corrupt, expected):
    gt, res = data
    res = copy.deepcopy(res)
    content = corrupt(res)
    path = _write(tmp_path / "dets.json", content if isinstance(content, (str, dict)) else res)  # else: edited
    ground_truth = coco_ground_truth_from_dict(gt)
    assert expected in _error(lambda p: coco_detections_from_file(p, ground_truth), path)


@pytest.mark.parametrize(
    "corrupt, expected",
    [
        (lambda g: "[]", "the annotation file: expected `object`, got `array` (is this a COCO annotation file?)"),
        (lambda g: g.pop("images"), "field 'images' is missing (is this a COCO annotation file?)"),
        (lambda g: g.update(categories={}), "field 'categories': expected `array`"),
        (lambda g: g["images"][1].pop("id"), "image #1: field 'id' is missing"),
        (lambda g: g["images"][1].update(width="wide"), "image #1: field 'width'"),
        (lambda g: g["categories"][2].update(id=None), "category #2: field 'id': expected `int`, got `null`"),
        (lambda g: g["annotations"][4].pop("bbox"), "annotation #4: field 'bbox' is missing"),
        (lambda g: g["annotations"][4].update(bbox=[1, 2]), "annotation #4: field 'bbox': expected `array` of length 4"),
        (lambda g: g["annotations"][4].update(area="big"), "annotation #4: field 'area'"),
        (lambda g: g["annotations"][4].update(image_id=777), "field 'image_id': 1 annotation(s) refer to ids absent"),
        (lambda g: g["annotations"][4].update(category_id=2), "the first is annotation #4"),
    ],
)
def test_bad_annotation_file_names_file_entry_and_field(tmp_path, data, corrupt, expected):
    gt = copy.deepcopy(data[0])
    content = corrupt(gt)
    path = _write(tmp_path / "ann.json", content if isinstance(content, str) else gt)  # else: edited
    assert expected in _error(coco_ground_truth_from_file, path)


def test_unreadable_file(tmp_path):
    assert "cannot read the annotation file" in _error(coco_ground_truth_from_file, tmp_path / "missing.json")


def _varied(gt: dict, res: list, seed: int) -> tuple[dict, list]:
    """The same dataset with what real files hold besides the needed fields: extra fields (segmentations, urls,
    info), optional fields left out or null, crowd flags as JSON booleans, integral ids written as floats, a
    category without a name, keys in another order, integer boxes."""
    rng = np.random.default_rng(seed)
    gt, res = copy.deepcopy(gt), copy.deepcopy(res)
    gt["info"], gt["licenses"] = {"year": 2017}, [{"id": 1, "name": "x"}]
    for im in gt["images"]:
        im["coco_url"] = "http://x/" + im["file_name"]
    for k in rng.choice(len(gt["images"]), 3, replace=False):
        del gt["images"][k]["width"], gt["images"][k]["file_name"]
    for a in gt["annotations"]:
        a["segmentation"] = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]] if rng.random() < 0.5 else {"counts": "abc", "size": [4, 4]}
        choice = rng.random()
        if choice < 0.1:
            del a["area"]
        elif choice < 0.2:
            a["area"] = None
        elif choice < 0.3:
            del a["iscrowd"]
        elif choice < 0.4:
            a["iscrowd"] = bool(a["iscrowd"])
        elif choice < 0.5:
            a["image_id"] = float(a["image_id"])
    del gt["categories"][1]["name"]
    for r in res[::3]:
        r["extra"] = {"nested": [1, {"deep": None}]}
        r["bbox"] = [round(v) for v in r["bbox"]]
        r["category_id"] = float(r["category_id"])
    res[::5] = [dict(reversed(list(r.items()))) for r in res[::5]]
    return gt, res


def _assert_same_fields(a, b):
    assert type(a) is type(b)
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype and np.array_equal(value, other), name
        else:
            assert value == other, name


@pytest.mark.parametrize("seed", range(3))
def test_columns_equal_the_dict_path(tmp_path, seed):
    gt = synthetic_coco_ground_truth(60, 12, seed=seed, mean_objects=6 + seed)
    gt, res = _varied(gt, simulate_detections(gt, seed=seed), seed)
    ann_path, res_path = _write(tmp_path / "ann.json", gt), _write(tmp_path / "dets.json", res)
    expected_gt = coco_ground_truth_from_dict(json.loads(ann_path.read_text()), source=str(ann_path))
    ground_truth = coco_ground_truth_from_file(ann_path)
    _assert_same_fields(ground_truth, expected_gt)
    expected_dets = coco_detections_from_results(json.loads(res_path.read_text()), expected_gt, str(res_path))
    _assert_same_fields(coco_detections_from_file(res_path, ground_truth), expected_dets)


def test_image_and_annotation_columns(tmp_path, data):
    gt, _ = _varied(*data, seed=0)
    columns = read_coco_annotations(_write(tmp_path / "ann.json", gt))
    images = gt["images"]
    assert columns.image_ids.tolist() == [im["id"] for im in images]
    assert columns.image_width.tolist() == [im.get("width", -1) for im in images]
    assert columns.image_height.tolist() == [im["height"] for im in images]
    assert columns.image_file_names == [im.get("file_name", "") for im in images]
    assert columns.ann_ids.tolist() == [a["id"] for a in gt["annotations"]]
    assert columns.category_names[1] == str(gt["categories"][1]["id"])  # no name: the id as text


def test_coco_mini_columns_equal_the_dict_path(coco_mini_dir):
    path = coco_mini_dir / "annotations" / "instances_val2017.json"
    _assert_same_fields(coco_ground_truth_from_file(path), coco_ground_truth_from_dict(json.loads(path.read_text()), str(path)))


@pytest.mark.parametrize("seed, dets_per_image", [(0, None), (1, None), (2, 100)])
def test_eval_from_files_equals_memory_and_pycocotools(tmp_path, seed, dets_per_image):
    gt = synthetic_coco_ground_truth(80, 20, seed=seed, mean_objects=8)
    res = simulate_detections(gt, seed=seed, dets_per_image=dets_per_image)
    from_files = evaluate_coco_files(_write(tmp_path / "ann.json", gt), _write(tmp_path / "dets.json", res))
    from_memory = detlab_eval(gt, res)
    for name in ("stats", "precision", "recall", "num_gt", "category_ids"):
        assert np.array_equal(getattr(from_files, name), getattr(from_memory, name)), name
    assert from_files.category_names == from_memory.category_names
    ref = pycocotools_eval(gt, res)
    assert np.abs(from_files.stats - ref.stats).max() <= TOL
    assert np.abs(from_files.precision - ref.eval["precision"]).max() <= TOL
    assert np.abs(from_files.recall - ref.eval["recall"]).max() <= TOL


# ---- the native reader of results files (detlab.ops.coco_json) and the msgspec decoder it hands files back to


def _both_paths(raw: bytes):
    """(native columns or None, the msgspec path's columns) of one results file's bytes."""
    import torch

    from detlab.eval.cocojson import _RESULTS_DECODER, _results_from_structs
    from detlab.ops.coco_json import read_coco_results_columns

    native = read_coco_results_columns(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    return native, _results_from_structs(_RESULTS_DECODER.decode(raw))


@pytest.mark.parametrize("spelling", [
    {},  # json.dumps' own
    {"indent": 2},
    {"separators": (",", ":")},
    {"ensure_ascii": False},
])
def test_native_reader_reads_what_tools_write_as_msgspec_does(data, spelling):
    gt, res = data
    _, res = _varied(gt, res, seed=1)
    res[0]["note"] = 'quote " backslash \\ tab \t unicode é \u2603 \U0001f600'  # escapes in a skipped string
    res[1]["segmentation"] = {"counts": [1, 2, 3], "size": [4, 4], "flags": [True, False, None, -0.5e-3]}
    res[2]["score"] = 1  # an integer score, an id written 3.0 (from _varied), an exponent
    res[3]["bbox"] = [1e-300, 2.5e3, 0.1, 12345678901234567890]
    native, expected = _both_paths(json.dumps(res, **spelling).encode())
    assert native is not None, "the native reader gave back a plain results file"
    for column, want in zip(native, vars(expected).values()):
        assert column.numpy().dtype == want.dtype and np.array_equal(column.numpy(), want)


@pytest.mark.parametrize("content", [
    '[{"image_id": "1", "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}]',  # ids and numbers as strings
    '[{"image_id": 1, "category_id": 2, "bbox": ["1", 2, 3, 4], "score": "0.5"}]',
    '[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "sc\\u006fre": 0.5}]',  # an escaped key: "score"
    '[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5, "score": 0.7}]',  # a repeated field
])
def test_native_reader_gives_back_what_msgspec_reads_another_way(tmp_path, content):
    from detlab.eval import read_coco_results

    native, expected = _both_paths(content.encode())
    assert native is None
    _assert_same_fields(read_coco_results(_write(tmp_path / "dets.json", content)), expected)


@pytest.mark.parametrize("content, expected", [
    ("", "malformed JSON"),
    ('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}] x', "malformed JSON"),
    ('[{"image_id": 01, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}]', "malformed JSON"),
    ('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": NaN}]', "near '"),
    ('[{"image_id": 1.5, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}]', "detection #0: field 'image_id'"),
    (f'[{{"image_id": {2**63}, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}}]', "field 'image_id'"),
    ('[{"image_id": 1, "category_id": true, "bbox": [1, 2, 3, 4], "score": 0.5}]', "field 'category_id'"),
    ('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3], "score": 0.5}]', "field 'bbox'"),
    ('[{"image_id": 1, "category_id": 2, "score": 0.5}]', "field 'bbox' is missing"),
    ('[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 1e999}]', "field 'score': number out of range"),
])
def test_what_the_native_reader_refuses_gets_msgspecs_named_error(tmp_path, content, expected):
    from detlab.eval import read_coco_results

    assert expected in _error(read_coco_results, _write(tmp_path / "dets.json", content))


@pytest.mark.parametrize("annotations", [[], None])  # an empty list, or the key left out
def test_an_annotation_file_without_annotations_reads_as_empty_columns(tmp_path, annotations):
    content = {"images": [{"id": 1, "width": 4, "height": 3}], "categories": [{"id": 7, "name": "cat"}]}
    if annotations is not None:
        content["annotations"] = annotations
    columns = read_coco_annotations(_write(tmp_path / "ann.json", content))
    assert columns.ann_boxes_xywh.shape == (0, 4) and columns.ann_area.shape == (0,)
    assert columns.image_ids.tolist() == [1] and columns.category_ids.tolist() == [7]


def _large_results(count: int, seed: int, trap: str | None = None) -> list[dict]:
    """``count`` detections (a file over the native reader's 1 MB parallel threshold); ``trap``, when given, is a
    skipped string in every 97th entry that looks like an entry start to the parallel reader's guess."""
    rng = np.random.default_rng(seed)
    results = [{"image_id": int(rng.integers(1, 10**6)), "category_id": int(rng.integers(1, 91)),
                "bbox": [float(v) for v in rng.random(4) * 500], "score": float(rng.random())}
               for _ in range(count)]
    for i in range(0, count, 97) if trap else ():
        results[i]["note"] = trap
    return results


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("trap", [None, ', {"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5}, {'])
def test_the_parallel_native_read_of_a_large_file_equals_msgspec(threads, trap):
    """Over 1 MB the native reader cuts the list into chunks read by several threads at guessed entry starts; a
    guess inside a string (``trap``) must not change a value or the order."""
    import torch

    raw = json.dumps(_large_results(20_000, seed=threads, trap=trap)).encode()
    assert len(raw) > 1 << 20
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native, expected = _both_paths(raw)
    finally:
        torch.set_num_threads(previous)
    assert native is not None and len(native[3]) == 20_000
    for column, want in zip(native, vars(expected).values()):
        assert column.numpy().dtype == want.dtype and np.array_equal(column.numpy(), want)


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_a_bad_entry_deep_in_a_large_file_gets_msgspecs_named_error(tmp_path, where):
    from detlab.eval import read_coco_results

    results = _large_results(20_000, seed=0)
    index = int(where * len(results))
    results[index]["score"] = "high"
    message = _error(read_coco_results, _write(tmp_path / "dets.json", results))
    assert f"detection #{index}: field 'score': expected `float`" in message
