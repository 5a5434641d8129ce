"""GQA at its real size: load time and peak memory of what a self-training round reads,
the eager loader (the whole JSON files as Python objects) against the streamed one.

Why: GQA's balanced train split is 943,000 questions over 72,140 images, with 74,942 train
scene graphs; a loader that `json.load`s both files holds several GB of dicts a round never
looks at. This writes synthetic files of the official sizes, in the official layout and
names (`{split}_balanced_questions.json`, `{split}_sceneGraphs.json`, `images/`), with
records of GQA's shape (ids, question, answer, fullAnswer, types, semantic program and
semanticStr, entailed / equivalent ids, groups, annotations; scene graphs of ~16 objects
with names, boxes, attributes and relations; one image in a thousand has a non-ASCII
location), then measures in a fresh subprocess per row:

    task = GQATask(data_dir); task.examples("train"); task.examples(eval_split, limit)
    the scene graphs of 8 train images; one example's image path and pixels

Rows: the eager loader (tasks/gqa.py at OLD_REF, read from git), the streamed loader with
its scene-graph index built (first run) and read from the cache (later runs). Each row
records its peak RSS before a check pass hashes every example (and each image's scene
graph): the rows' digests must be equal. Counts (official): train 943,000 questions /
72,140 images / 74,942 scene graphs; val 132,062 / 10,234 / 10,696; testdev 12,578 / 398
(testdev has no public scene graphs). The generated folder is deleted at the end.

    python bench/gqa_scale.py [--scale 1.0] [--eval-split val] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: the last commit whose tasks/gqa.py loads both files whole (the "before" row)
OLD_REF = "d67dac663f8690a6a84edab368a2439a8abc4147"
#: split -> (questions, images with questions, scene graphs or 0)
OFFICIAL = {"train": (943_000, 72_140, 74_942), "val": (132_062, 10_234, 10_696), "testdev": (12_578, 398, 0)}
TARGET_GB = 6.0
LINKS_PER_FILE = 50_000

OBJECTS = ["man", "woman", "shirt", "table", "chair", "car", "tree", "sky", "building", "window", "plate", "cup",
           "dog", "cat", "horse", "bus", "sign", "pole", "grass", "road", "wall", "door", "bag", "hat", "jacket",
           "bench", "boat", "clock", "lamp", "bottle", "bowl", "pizza", "umbrella", "fence", "bike", "train"]
ATTRIBUTES = ["white", "black", "blue", "red", "green", "brown", "large", "small", "wooden", "metal", "tall",
              "dark", "striped", "open", "standing", "sitting", "empty", "round", "young", "silver"]
RELATIONS = ["to the left of", "to the right of", "on", "wearing", "holding", "near", "behind", "in front of",
             "on top of", "under", "sitting on", "inside", "next to", "above", "carrying"]
KINDS = [("verify", "attr", "verifyAttr"), ("query", "rel", "relS"), ("query", "attr", "queryAttr"),
         ("choose", "attr", "chooseAttr"), ("logical", "obj", "logicOr"), ("compare", "attr", "sameColor"),
         ("verify", "rel", "existRelS"), ("query", "cat", "categoryRelS")]


# -- the synthetic dataset -------------------------------------------------------------------
def image_ids(split: str, n: int) -> list[str]:
    """GQA-style image ids: Visual Genome numbers, and one in ten "n<number>"."""
    base = {"train": 1_000_000, "val": 2_100_000, "testdev": 2_300_000}[split]
    return [f"n{base + k}" if k % 10 == 9 else str(base + k) for k in range(n)]


def scene_graph(rng: random.Random, first_object: int) -> dict[str, Any]:
    ids = [str(first_object + k) for k in range(rng.randint(5, 28))]
    objects = {}
    for oid in ids:
        w, h = rng.randint(4, 300), rng.randint(4, 300)
        objects[oid] = {"name": rng.choice(OBJECTS), "h": h, "relations": [
            {"object": rng.choice(ids), "name": rng.choice(RELATIONS)} for _ in range(rng.randint(0, 6))],
            "w": w, "attributes": rng.sample(ATTRIBUTES, rng.randint(0, 3)), "y": rng.randint(0, 200),
            "x": rng.randint(0, 300)}
    graph: dict[str, Any] = {"width": rng.choice([500, 640, 800, 1024]), "objects": objects,
                             "height": rng.choice([333, 375, 480, 500, 768])}
    if rng.random() < 0.3:
        graph["location"] = "café" if rng.random() < 0.0033 else rng.choice(["kitchen", "street", "beach", "park"])
    if rng.random() < 0.2:
        graph["weather"] = rng.choice(["sunny", "cloudy", "rainy"])
    return graph


def question(rng: random.Random, qid: int, image_id: str) -> dict[str, Any]:
    obj, other, attr, rel = rng.choice(OBJECTS), rng.choice(OBJECTS), rng.choice(ATTRIBUTES), rng.choice(RELATIONS)
    oid, other_id = str(rng.randint(1_000_000, 3_999_999)), str(rng.randint(1_000_000, 3_999_999))
    structural, semantic, detailed = rng.choice(KINDS)
    if structural == "verify":
        text, answer, full = f"Is the {obj} {rel} the {other} {attr}?", rng.choice(["yes", "no"]), f"Yes, the {obj} is {attr}."
    elif structural == "choose":
        text, answer, full = f"Is the {obj} {attr} or {rng.choice(ATTRIBUTES)}?", attr, f"The {obj} is {attr}."
    else:
        text, answer, full = f"What is the {attr} {obj} {rel}?", other, f"The {obj} is {rel} the {other}."
    steps = [{"operation": "select", "dependencies": [], "argument": f"{obj} ({oid})"},
             {"operation": "relate", "dependencies": [0], "argument": f"{other},{rel},o ({other_id})"},
             {"operation": f"{structural} {rng.choice(['color', 'material', 'size', 'name'])}",
              "dependencies": [1], "argument": attr}][:rng.randint(2, 3)]
    return {"semantic": steps, "entailed": [f"{qid + k:08d}" for k in range(1, rng.randint(1, 8))],
            "equivalent": [f"{qid:08d}"], "question": text, "imageId": image_id, "isBalanced": True,
            "groups": {"global": rng.choice([None, attr, obj]), "local": f"{rng.randint(1, 15):02d}-{obj}_{attr}"},
            "answer": answer,
            "semanticStr": "->".join(f"{s['operation']}: {s['argument']} {s['dependencies']}" for s in steps),
            "annotations": {"answer": {}, "question": {"2": oid}, "fullAnswer": {"1": oid}},
            "types": {"detailed": detailed, "semantic": semantic, "structural": structural}, "fullAnswer": full}


def write_object(path: Path, items: Any) -> None:
    """Write a JSON object member by member (as `json.dump` lays it out) from (key, value) pairs."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("{")
        fh.writelines((", " if k else "") + json.dumps(key) + ": " + json.dumps(value) for k, (key, value) in enumerate(items))
        fh.write("}")


def write_dataset(root: Path, scale: float, seed: int = 0) -> dict[str, Any]:
    """Write the three splits at `scale` x the official counts; returns counts and sizes."""
    from PIL import Image
    from tqdm import tqdm

    (root / "images").mkdir(parents=True)
    made: dict[str, Any] = {}
    linked = 0
    for split, (n_questions, n_images, n_graphs) in OFFICIAL.items():
        rng = random.Random(f"{seed}/{split}")
        nq, ni, ng = (max(1, round(n * scale)) if n else 0 for n in (n_questions, n_images, n_graphs))
        ids = image_ids(split, max(ni, ng))
        for image_id in tqdm(ids, desc=f"{split} images (hard links)", unit="img", mininterval=2):
            pixels = root / f"pixels-{linked // LINKS_PER_FILE}.jpg"  # a file has at most 65,000 links on ext4
            if linked % LINKS_PER_FILE == 0:
                Image.new("RGB", (64, 48), (90, 120, 150)).save(pixels)
            os.link(pixels, root / "images" / f"{image_id}.jpg")
            linked += 1
        if ng:
            graphs = ((image_id, scene_graph(rng, 1_000_000 + 40 * k)) for k, image_id in enumerate(ids))
            write_object(root / f"{split}_sceneGraphs.json",
                         tqdm(graphs, total=ng, desc=f"{split} scene graphs", unit="graph", mininterval=2))
        first_qid = {"train": 0, "val": 20_000_000, "testdev": 30_000_000}[split]
        per_image = [nq // ni + (k < nq % ni) for k in range(ni)]
        questions = ((f"{first_qid + q:08d}", question(rng, first_qid + q, ids[k]))
                     for q, k in enumerate(k for k, m in enumerate(per_image) for _ in range(m)))
        write_object(root / f"{split}_balanced_questions.json",
                     tqdm(questions, total=nq, desc=f"{split} questions", unit="q", mininterval=2))
        made[split] = {"questions": nq, "images_with_questions": ni, "scene_graphs": ng,
                       "questions_mb": round((root / f"{split}_balanced_questions.json").stat().st_size / 2**20, 1),
                       "scene_graphs_mb": round((root / f"{split}_sceneGraphs.json").stat().st_size / 2**20, 1)
                       if ng else 0}
    return made


# -- one measurement (in its own process) --------------------------------------------------------
def use_old_loader() -> None:
    """Register tasks/gqa.py as it was at OLD_REF as the `gqa` task of this process."""
    from viprog.tasks import TASKS

    source = subprocess.run(["git", "show", f"{OLD_REF}:tasks/gqa.py"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    if source.returncode:
        sys.exit(f"cannot read the eager loader from git ({source.stderr.strip()}); run in a clone with history")
    TASKS.remove("gqa")
    namespace: dict[str, Any] = {"__name__": "gqa_eager"}
    exec(compile(source.stdout, f"{OLD_REF[:8]}:tasks/gqa.py", "exec"), namespace)  # noqa: S102  (this repo's own code)


def digest(examples: list[Any]) -> str:
    """A hash of every field of `examples`, each image's scene graph hashed once."""
    h, graphs_seen = hashlib.sha256(), set()
    for ex in examples:
        h.update(repr((ex.id, ex.image, ex.query, ex.answer, ex.box, ex.choices, ex.question_type, ex.image_id,
                       ex.reference_program, sorted(ex.meta))).encode())
        if ex.meta and ex.image_id not in graphs_seen:
            graphs_seen.add(ex.image_id)
            h.update(json.dumps(dict(ex.meta), sort_keys=True).encode())
    return h.hexdigest()


def measure(loader: str, data_dir: Path, eval_split: str, eval_limit: int) -> dict[str, Any]:
    import psutil

    from viprog.tasks import TASKS

    if loader == "eager":
        use_old_loader()
    rss_start = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    task = TASKS.get("gqa")(data_dir=data_dir, progress=False)
    pool = task.examples("train")
    t1 = time.perf_counter()
    evaluation = task.examples(eval_split, limit=eval_limit)
    t2 = time.perf_counter()
    step = max(1, len(pool) // 8)
    objects = [len(ex.meta["scene_graph"]["objects"]) for ex in pool[::step][:8] if ex.meta]
    pixels = task.load_image(pool[0])
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"loader": loader, "train_examples": len(pool), "eval_examples": len(evaluation),
           "train_s": round(t1 - t0, 2), "eval_s": round(t2 - t1, 2), "graphs_and_image_s": round(t3 - t2, 3),
           "total_s": round(t3 - t0, 2), "peak_rss_gb": round(peak / 2**30, 3),
           "rss_before_loading_gb": round(rss_start / 2**30, 3),
           "rss_after_gb": round(psutil.Process().memory_info().rss / 2**30, 3),
           "graph_objects_of_8_images": objects, "image_path": pool[0].image, "image_shape": list(pixels.shape)}
    t4 = time.perf_counter()
    row["digest"] = digest(pool + evaluation)
    row["check_s"] = round(time.perf_counter() - t4, 1)
    return row


def run_child(loader: str, data_dir: Path, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "VIPROG_CACHE": str(cache)}
    cmd = [sys.executable, __file__, "--child", loader, "--out", str(data_dir), "--eval-split", args.eval_split,
           "--eval-limit", str(args.eval_limit)]
    print(f"measuring: {loader} ...", flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        return {"loader": loader, "failed": f"exit {done.returncode}: {done.stderr.strip()[-400:]}"}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {loader}: {row['total_s']} s, peak RSS {row['peak_rss_gb']} GB", flush=True)
    return row


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the official counts (1.0: real size)")
    parser.add_argument("--eval-split", default="val", help="the limited eval split a round reads (val or testdev)")
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="folder to write the dataset in (default: a temp one)")
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset")
    parser.add_argument("--result", type=Path, default=ROOT / "bench" / "results" / "gqa_scale.json")
    parser.add_argument("--child", choices=["eager", "streamed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.out, args.eval_split, args.eval_limit)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="gqa_scale-", dir=args.out))
    data_dir, cache = work / "gqa", work / "cache"
    load_before = uptime()
    try:
        t0 = time.perf_counter()
        counts = write_dataset(data_dir, args.scale)
        written_s = time.perf_counter() - t0
        print(f"dataset written to {data_dir} in {written_s:.0f} s", flush=True)
        rows = {"streamed_index_built": run_child("streamed", data_dir, cache, args),
                "streamed_index_cached": run_child("streamed", data_dir, cache, args),
                "eager": run_child("eager", data_dir, cache, args)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    old, new = rows["eager"], rows["streamed_index_cached"]
    ok = all("failed" not in r for r in rows.values())
    result = {
        "what": "load of a self-training round's GQA data at the official sizes: eager (json.load) vs streamed",
        "command": " ".join(["python", "bench/gqa_scale.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "uptime_before": load_before, "uptime_after": uptime(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "scale": args.scale, "eval_split": args.eval_split, "eval_limit": args.eval_limit, "eager_loader": OLD_REF,
        "dataset": counts, "dataset_written_s": round(written_s, 1), "rows": rows,
        "examples_equal": ok and len({r["digest"] for r in rows.values()}) == 1,
        "peak_rss_ratio_eager_over_streamed": round(old["peak_rss_gb"] / new["peak_rss_gb"], 2) if ok else None,
        "time_ratio_eager_over_streamed": round(old["total_s"] / new["total_s"], 2) if ok else None,
        "target_peak_rss_gb": TARGET_GB,
        "meets_target": ok and max(rows["streamed_index_built"]["peak_rss_gb"], new["peak_rss_gb"]) <= TARGET_GB,
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("examples_equal", "peak_rss_ratio_eager_over_streamed",
                                             "time_ratio_eager_over_streamed", "meets_target")}))
    print(f"results written to {args.result}")
    return 0 if result["examples_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
