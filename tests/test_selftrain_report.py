"""report.html: self-contained, with the accuracy plot and a gallery with boxes drawn."""

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from viprog.report import render_image, trace_boxes, write_report
from viprog.runs import Run, write_json_atomic, write_jsonl_atomic


@pytest.fixture
def run_dir(tmp_path):
    run = Run(tmp_path / "demo")
    write_json_atomic(run.config_path, {"task": "toy-count", "policy": "hf", "rounds": 2})
    image = tmp_path / "img.png"
    Image.fromarray(np.full((32, 32, 3), 240, np.uint8)).save(image)
    for k, acc in enumerate((0.25, 0.5, 0.75)):
        metrics = {"round": k, "eval/accuracy": acc, "eval/accuracy/circle": acc, "eval/errors": {"runtime": 2 - k}}
        if k:
            metrics |= {"filter/kept_frac": 0.2 * k, "filter/kept": 3 * k, "reward/mean": 0.3 * k}
        write_json_atomic(run.artifact(k, "metrics.json"), metrics)
    trace = [{"primitive": "find", "box": [0, 0, 32, 32], "args": ["circle"], "result": [[4, 20, 12, 28]]}]
    rows = [{"question_id": f"q{i}", "query": "How many circles are there?", "image": str(image), "gold": "1",
             "program": "def execute_command(image):\n    return 1 < 2\n", "answer": 1, "reward": float(i % 2),
             "error": None, "error_kind": None, "trace": trace} for i in range(5)]
    write_jsonl_atomic(run.artifact(2, "eval.jsonl"), rows)
    return run.root


def test_trace_boxes_are_flipped_to_top_left_origin():
    (box, label), = trace_boxes([{"args": ["circle"], "result": [[4, 20, 12, 28]]}], height=32)
    assert box == (4, 4, 12, 12) and label == "circle"


def test_report_is_self_contained_with_plot_and_gallery(run_dir):
    page = write_report(run_dir).read_text()
    assert 'id="accuracy-plot"' in page and page.count("<polyline") == 3
    assert page.count('class="card') == 5
    assert not re.search(r'(src|href)="(http|file|/)', page)  # nothing fetched


def test_gallery_images_show_the_boxes_from_the_trace(run_dir):
    page = write_report(run_dir).read_text()
    uri = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"))
    scale = image.shape[0] // 32
    # the found box's left edge (x=4, rows 4..12 from the top) is drawn in blue
    edge = image[5 * scale:11 * scale, 4 * scale]
    assert (edge[:, 2] > 200).all() and (edge[:, 0] < 100).all()
    assert (image[20 * scale, 20 * scale] == 240).all()  # background untouched away from the box


def test_a_box_with_no_width_or_height_is_drawn_not_refused(tmp_path):
    image = tmp_path / "img.png"
    Image.fromarray(np.full((40, 48, 3), 240, np.uint8)).save(image)
    flat = {"primitive": "find", "box": [0, 0, 48, 40], "args": ["ball"], "result": [[24, 1, 48, 1], [5, 5, 5, 9]]}
    row = {"image": str(image), "trace": [flat], "answer": {"box": [3, 3, 3, 8]}, "gold": [7, 7, 9, 7], "reward": 0}
    uri = render_image(row)
    assert uri is not None and uri.startswith("data:image/png;base64,")


@pytest.mark.slow
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    page = write_report(run_dir)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    assert re.search(r'<svg[^>]*id="accuracy-plot"', dom)
    assert dom.count("<polyline") == 3
    assert len(re.findall(r'<div class="card (ok|bad)"', dom)) == 5
    assert dom.count('src="data:image/png;base64,') == 5
