"""Label efficiency: selection by student/teacher disagreement vs random selection.

The synthetic bin world stands in for the robot. Pool recordings go through the robot's dedup
(the novel frames are the pool); held-out recordings are the test set. For each seed, all
arms start from the same random seed set and the same model trained on it; then, each round,
each arm picks ``--budget`` more pool frames for labelling, fine-tunes its previous model on
everything labelled so far and is scored (mask mAP50-95) on the test set:

- **random**: a uniform draw from the unlabelled pool.
- **disagreement**: the arm's current student (its model exported to OpenVINO FP32, run by
  the detector's runtime) is compared with the teacher (``core.disagreement.compare``) on
  every unlabelled pool frame, and the highest disagreement scores (the share of objects the
  two disagree on) are taken: the annotation queue's ranking until 2026-11-22.
- **diverse**: the same scores; the best of each of ``--budget`` k-means clusters of the
  frames' thumbnail embeddings is taken (``flush --limit N --diverse``).
- **balanced**: the same comparisons, ranked by ``core.selection.labelling_priority``: the
  disagreements summed, each weighted by its class's inverse frequency among the instances
  labelled so far (``class_balance_weights``; on the robot, the ``train_instances`` of the
  student's manifest), so frames with many mistakes on classes the student has few labels
  of come first. This is what the annotation queue keeps and ``flush --limit N`` exports.

``--scenario uniform`` puts both target classes in every pool recording; ``longtail`` puts
the new product (blue cans) in only ``--rare-bags`` of them, as a picking cell mostly sees
its usual stock. The test set always holds both.

The teacher is the synthetic world's ground truth (SAM3 on the robot), and the labels a person
would return from CVAT are the teacher's masks, so every arm gets identical labels for a frame.
Every training in a round gets the same compute (``--iters`` images seen; epochs =
iters / labelled images); the seed model starts from ``--init`` and later rounds fine-tune the
arm's previous model. ``--init scratch`` is yolo11n-seg from its config; ``--init pretrained``
first trains it on other objects of the same world (green, yellow and black cans, boxes,
balls: never the two target classes), standing in for the COCO weights a user starts from
(no weights can be downloaded here). ``--init stock`` is a later turn of the flywheel: the
seed model has already learned the cell's usual stock (red cans, from 3 recordings that are
neither pool nor test, among boxes and balls) and has never seen a labelled blue can, the
new product; those earlier labels stay in every round's training set (in every arm), as
merged dataset versions do in the flywheel, and only the new labels are counted.

``--retrain RESULTS_JSON`` selects nothing: it trains each recorded round's labelled frames
afresh from the seed model with ``--iters`` images seen (more than the rounds had), so the
labels are compared without the compute each round had so far riding along.

Run:  .venv/bin/python benchmarks/active_learning/bench_label_efficiency.py
      (one to two hours on a 2-core CPU; ``--quick`` checks the plumbing in a minute).
      Rounds already trained with the same inputs are read back from ``--cache``, so an
      interrupted run, or the same run with more ``--rounds``, redoes only what is missing
      (``--fresh`` retrains everything).
Writes results*.json and label_efficiency*.png beside this file (or ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
#: random: a uniform draw. disagreement: the top disagreement scores.
#: diverse: the top score of each visual cluster (``flush --limit N --diverse``).
#: balanced: the highest class-balanced labelling priority (what the queue keeps).
ARMS = ("random", "disagreement", "diverse", "balanced")
TARGET_RATIO = 0.6  # issue #6: reach random's final mAP with at most 60% of its labels
TARGETS = ("red_can", "blue_can")  # the classes being labelled; the rest are distractors


# -- pure helpers (tested in test/benchmarks) ----------------------------------------------------

def labels_to_reach(labelled: Sequence[float], maps: Sequence[float], target: float) -> float | None:
    """Labelled images at which a mAP curve first reaches ``target``, linearly interpolated.

    Returns None when the curve never reaches it.

    Example:
        >>> labels_to_reach([20, 40, 60], [0.1, 0.2, 0.4], 0.3)
        50.0
        >>> labels_to_reach([20, 40], [0.1, 0.2], 0.3) is None
        True
    """
    if maps and maps[0] >= target:
        return float(labelled[0])
    for (x0, y0), (x1, y1) in zip(zip(labelled, maps), zip(labelled[1:], maps[1:])):
        if y1 >= target:
            return float(x0 + (x1 - x0) * (target - y0) / (y1 - y0))
    return None


def top_scores(scores: dict[int, float], k: int, rng: np.random.Generator) -> list[int]:
    """The ``k`` keys with the highest scores; ties are broken at random.

    Example:
        >>> top_scores({1: 0.2, 2: 0.9, 3: 0.5}, 2, np.random.default_rng(0))
        [2, 3]
    """
    keys = list(scores)
    tiebreak = rng.random(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-scores[keys[i]], tiebreak[i]))
    return [keys[i] for i in order[:k]]


def _by_round(rounds: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """One seed's rounds keyed by round number (files from before retrains number them by
    position)."""
    return {r.get("round", i): r for i, r in enumerate(rounds)}


def _rounds_all_seeds_have(by_seed: dict[Any, list[dict[str, Any]]]
                           ) -> tuple[list[int], list[list[dict[str, Any]]]]:
    """The round numbers every seed has, and for each, the seeds' results for it."""
    keyed = [_by_round(rounds) for rounds in by_seed.values()]
    numbers = sorted(set.intersection(*(set(k) for k in keyed)))
    return numbers, [[k[n] for k in keyed] for n in numbers]


def summarise(runs: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Mean/std mAP per arm and round over seeds, and the label-efficiency verdict.

    ``runs[arm][seed]`` is that arm's list of rounds (``labelled``, ``map``, optionally
    ``round``), in order. The mean curves hold the rounds every seed of the arm has (a
    retrain may have trained more rounds on one seed than another); each seed's own verdict
    reads all of its rounds.
    """
    curves: dict[str, dict[str, Any]] = {}
    for arm, by_seed in runs.items():
        numbers, rounds = _rounds_all_seeds_have(by_seed)
        curves[arm] = {
            "labelled": [float(np.mean([r["labelled"] for r in rs])) for rs in rounds],
            "map_mean": [float(np.mean([r["map"] for r in rs])) for rs in rounds],
            "map_std": [float(np.std([r["map"] for r in rs])) for rs in rounds],
            "round": numbers}
        classes = sorted({c for rs in rounds for r in rs for c in r.get("map_per_class", {})})
        if classes:  # a class missing from a round's test results counts as 0
            curves[arm]["class_map_mean"] = {
                c: [float(np.mean([r.get("map_per_class", {}).get(c, 0.0) for r in rs]))
                    for rs in rounds] for c in classes}
    rnd = curves["random"]
    target, final_labels = rnd["map_mean"][-1], rnd["labelled"][-1]
    # else "reaching" it means nothing; a retrain of random's final round alone cannot tell
    learned = len(rnd["map_mean"]) == 1 or target > rnd["map_mean"][0]
    verdicts = {}
    for arm in runs:
        if arm == "random":
            continue
        reach = labels_to_reach(curves[arm]["labelled"], curves[arm]["map_mean"], target)
        per_seed = {}
        for seed, r in runs["random"].items():
            a = runs[arm][seed]
            hit = labels_to_reach([x["labelled"] for x in a], [x["map"] for x in a],
                                  r[-1]["map"])
            per_seed[str(seed)] = None if hit is None else round(hit / r[-1]["labelled"], 3)
        ratio = None if reach is None else reach / final_labels
        verdicts[arm] = {"labels_to_reach": reach, "label_ratio": ratio,
                         "label_ratio_per_seed": per_seed,
                         "target_met": learned and ratio is not None and ratio <= TARGET_RATIO}
    return {"curves": curves, "random_final_map": target, "random_final_labels": final_labels,
            "target_ratio": TARGET_RATIO, "learned": learned, "arms": verdicts}


# -- data -----------------------------------------------------------------------------------------

@dataclass
class PoolFrame:
    """One novel pool frame: its image and label file, and the teacher's label image."""

    name: str
    image: Path
    label_lines: list[str]
    labels: np.ndarray
    classes: dict[int, str]
    embedding: np.ndarray  # the dedup's thumbnail descriptor


def _sim(cache: Path, seed: int, args: argparse.Namespace, per_class: int,
         classes: Sequence[str] = TARGETS) -> Path:
    from cv_autolabel.tools.sim.run import SimConfig, simulate  # noqa: PLC0415

    tag = "" if tuple(classes) == TARGETS else "_" + "+".join(classes)
    bag = (cache / "bags"
           / f"seed{seed}_{args.frames}f_{args.width}x{args.height}_pc{per_class}{tag}")
    if not bag.exists():
        simulate(SimConfig(frames=args.frames, seed=seed, width=args.width, height=args.height,
                           per_class=per_class, classes=tuple(classes)), bag)
    return bag


def pool_classes(scenario: str, bag: int, rare_bags: int) -> tuple[str, ...]:
    """The target classes in pool recording ``bag`` under ``scenario``.

    ``uniform``: both in every recording. ``longtail``: the cell's usual stock (red cans) in
    every recording, the new product (blue cans) only in the first ``rare_bags`` of them.

    Example:
        >>> [pool_classes("longtail", b, 1) for b in range(3)]
        [('red_can', 'blue_can'), ('red_can',), ('red_can',)]
    """
    if scenario == "uniform" or bag < rare_bags:
        return TARGETS
    return TARGETS[:1]


def frames_holding(frames: Sequence[PoolFrame], names: Sequence[str]) -> dict[str, int]:
    """How many of ``frames`` hold at least one instance of each class (from their labels)."""
    return {c: sum(any(line.split()[0] == str(k) for line in f.label_lines) for f in frames)
            for k, c in enumerate(names)}


def _classes(gt: Any) -> dict[int, str]:
    return {i: str(r["class"]) for i, r in gt.instances.items()}


def _yolo_lines(gt: Any, names: Sequence[str]) -> list[str]:
    """YOLO-seg label lines of one frame's truth (prepare's own formatting)."""
    from cv_autolabel.core.rle import uncompressed_rle  # noqa: PLC0415
    from cv_autolabel.tools.prepare import yolo_label_lines  # noqa: PLC0415

    classes = _classes(gt)
    anns = [{"segmentation": uncompressed_rle(gt.labels == i),
             "category_id": names.index(classes[i]) + 1}
            for i in np.unique(gt.labels).tolist() if i and classes.get(i) in names]
    return yolo_label_lines(anns, *gt.labels.shape)[0]


def _frames(bag: Path) -> list[tuple[Any, Any]]:
    """(frame, ground truth) of every frame of a synthetic bag."""
    from cv_autolabel.ros.bag import BagReader  # noqa: PLC0415
    from cv_autolabel.ros.ground_truth import iter_frames_with_truth  # noqa: PLC0415

    with BagReader(bag) as reader:
        return list(iter_frames_with_truth(reader))


def build_pool(bags: list[Path], out: Path, names: Sequence[str]) -> list[PoolFrame]:
    """Dedup the pool recordings as the robot would; write the novel frames as PNGs."""
    from cv_autolabel.core.dedup import DedupSettings, open_deduplicator  # noqa: PLC0415
    from cv_autolabel.core.embedders import create_embedder  # noqa: PLC0415

    embedder = create_embedder("thumbnail")
    out.mkdir(parents=True, exist_ok=True)
    dedup = open_deduplicator(DedupSettings(data_dir=out / "dedup", db_uri=":memory:"))
    pool: list[PoolFrame] = []
    try:
        for b, bag in enumerate(bags):
            for n, (frame, gt) in enumerate(_frames(bag)):
                if not dedup.process(frame, source=str(bag)).novel:
                    continue
                name = f"b{b}_{n:04d}"
                path = out / "images" / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
                pool.append(PoolFrame(name, path, _yolo_lines(gt, names), gt.labels,
                                      _classes(gt), embedder.embed(frame.rgb)))
    finally:
        dedup.close_all()
    return pool


def write_yolo_frames(bags: list[Path], root: Path, names: Sequence[str], *, every: int,
                      prefix: str) -> Path:
    """Every ``every``-th frame of ``bags`` with its truth's labels, as ``root/images`` and
    ``root/labels``; return the images folder."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for b, bag in enumerate(bags):
        for n, (frame, gt) in enumerate(_frames(bag)):
            if n % every:
                continue
            name = f"{prefix}{b}_{n:04d}"
            cv2.imwrite(str(images / f"{name}.png"), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
            (labels / f"{name}.txt").write_text("\n".join(_yolo_lines(gt, names)) + "\n")
    return images


def data_yaml(path: Path, train: Path, val: Path, names: Sequence[str]) -> Path:
    """Write an ultralytics data.yaml with absolute train and val image folders."""
    path.write_text(f"train: {train}\nval: {val}\nnames:\n"
                    + "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return path


def write_dataset(root: Path, frames: Sequence[PoolFrame], test_images: Path,
                  names: Sequence[str], earlier: Path | None = None) -> Path:
    """A YOLO dataset: ``frames`` as train (linked images), plus the ``earlier`` images
    folder's frames and labels when given (an earlier turn's labels); the test set as val."""
    images, labels = root / "images" / "train", root / "labels" / "train"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for f in frames:
        (images / f.image.name).symlink_to(f.image)
        (labels / f"{f.name}.txt").write_text("\n".join(f.label_lines) + "\n")
    for image in earlier_images(earlier):
        (images / image.name).symlink_to(image)
        shutil.copy(image.parent.parent / "labels" / f"{image.stem}.txt", labels)
    return data_yaml(root / "data.yaml", images, test_images, names)


def earlier_images(earlier: Path | None) -> list[Path]:
    """The labelled images of an earlier turn (``root/images`` beside ``root/labels``)."""
    return [] if earlier is None else sorted(earlier.glob("*.png"))


def earlier_counts(earlier: Path | None, names: Sequence[str]) -> dict[str, int]:
    """Instances of each class in an earlier turn's labels."""
    ids = [int(line.split()[0]) for image in earlier_images(earlier)
           for line in (image.parent.parent / "labels" / f"{image.stem}.txt").read_text()
           .splitlines() if line.strip()]
    return {c: ids.count(k) for k, c in enumerate(names)}


def pretrain_dir(cache: Path, args: argparse.Namespace) -> Path:
    """Where the seed weights of ``--init pretrained`` or ``stock`` and their data live."""
    stock = args.init == "stock"
    return cache / (f"pretrain{'_stock' if stock else ''}_{args.width}x{args.height}_"
                    f"{args.imgsz}_{args.pretrain_epochs}")


def pretrain(cache: Path, args: argparse.Namespace, log: Any) -> str:
    """Seed weights (cached). ``--init pretrained``: trained on the world's other objects, a
    stand-in for COCO weights. ``--init stock``: trained on the usual stock (red cans) with
    the target class list, so the new product (blue cans) is a class it has no labels of."""
    from cv_autolabel.tools.train import train  # noqa: PLC0415

    stock = args.init == "stock"
    out = pretrain_dir(cache, args)
    weights = out / "run" / "weights" / "last.pt"
    if weights.is_file():
        return str(weights)
    from cv_autolabel.tools.sim.run import SimConfig, simulate  # noqa: PLC0415

    if stock:  # what it learns is red_can, class 0 of the targets; blue_can is never shown
        names, shown, distractors, seed0 = TARGETS, TARGETS[:1], ("box", "ball"), 4000
    else:
        names = ("green_can", "yellow_can", "black_can", "box", "ball")
        shown, distractors, seed0 = names[:3], names[3:], 3000
    shutil.rmtree(out, ignore_errors=True)
    bags = [out / f"bag{b}" for b in range(3)]
    for b, bag in enumerate(bags):
        simulate(SimConfig(frames=args.frames, seed=seed0 + b, width=args.width,
                           height=args.height, classes=shown, distractors=distractors), bag)
    images = write_yolo_frames(bags, out / "data", names, every=3, prefix="p")
    data = data_yaml(out / "data" / "data.yaml", images, images, names)
    log(f"pretraining on {len(list(images.iterdir()))} frames of {', '.join(shown)}, "
        f"{args.pretrain_epochs} epochs ...")
    run = train(data, model="yolo11n-seg.yaml", epochs=args.pretrain_epochs, imgsz=args.imgsz,
                batch=8, out=out, name="run", seed=0, tracking="none", device=args.device,
                patience=args.pretrain_epochs, extra={"val": False})
    log(f"   pretrained: mask mAP50-95 {run['metrics']['mask_map50_95']:.3f} on its own data")
    return run["last_weights"]


# -- one round ------------------------------------------------------------------------------------

def train_round(root: Path, frames: Sequence[PoolFrame], test_images: Path,
                names: Sequence[str], *, init: str, args: argparse.Namespace,
                seed: int, earlier: Path | None = None,
                cached_only: bool = False) -> dict[str, Any] | None:
    """Train on ``frames`` (and the ``earlier`` turn's labelled images, if any; from
    ``init``); return labelled count (new labels only), test mAP and weights.

    A round already trained in ``root`` with the same inputs (:func:`round_key`) is read
    back instead (marked ``resumed``): trainings are deterministic per seed, so an
    interrupted run, or one given more ``--rounds``, redoes only what is missing. With
    ``cached_only``, a round not trained yet is not trained now: None.
    """
    from cv_autolabel.tools.train import train  # noqa: PLC0415

    kept = len(earlier_images(earlier))
    epochs = max(1, round(args.iters / (len(frames) + kept)))
    device = getattr(args, "device", "cpu")
    key = round_key(frames, init, epochs=epochs, imgsz=args.imgsz, seed=seed,
                    test_images=test_images, **({"earlier": earlier} if kept else {}),
                    **({"device": device} if device != "cpu" else {}))
    record = root / "round.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("key") == key and Path(saved["result"]["weights"]).is_file():
            return saved["result"] | {"resumed": True}
    if cached_only:
        return None
    if root.exists():
        shutil.rmtree(root)
    data = write_dataset(root / "data", frames, test_images, names, earlier)
    started = time.perf_counter()
    run = train(data, model=init, epochs=epochs, imgsz=args.imgsz, batch=8, out=root,
                name="run", seed=seed, tracking="none", patience=epochs, device=device,
                extra={"val": False})  # validated once, at the end, on the test set
    result = {"labelled": len(frames), "instances": sum(len(f.label_lines) for f in frames),
              "earlier_labelled": kept,
              "map": run["metrics"]["mask_map50_95"],
            "map50": run["metrics"]["mask_map50"],
            "map_per_class": run["mask_map50_95_per_class"], "epochs": epochs,
            "train_s": round(time.perf_counter() - started, 1),
            "weights": run["last_weights"]}
    record.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
    return result


def hold_work(work: Path) -> Any:
    """Hold the work folder ``work`` for this run (an open lock file: keep it until the run
    ends). Raises SystemExit when another run holds it: each run rebuilds the folder's pool
    and test set, which would pull the images from under the other's trainings."""
    import fcntl  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    handle = (work / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(f"{work} is in use by another run of this benchmark: wait for it, "
                         "or give this one another --work") from None
    return handle


def round_key(frames: Sequence[PoolFrame], init: str, **settings: Any) -> dict[str, Any]:
    """What a round's training depends on: its frames, its starting weights (their sha256,
    or the config's name) and ``settings``; JSON-comparable."""
    start = Path(init)
    digest = hashlib.sha256(start.read_bytes()).hexdigest() if start.is_file() else init
    return {"frames": [f.name for f in frames], "init": digest,
            **{k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}}


def labelled_counts(frames: Sequence[PoolFrame], names: Sequence[str]) -> dict[str, int]:
    """Instances of each class in ``frames``' labels (what the student was trained on)."""
    ids = [int(line.split()[0]) for f in frames for line in f.label_lines]
    return {c: ids.count(k) for k, c in enumerate(names)}


def disagreement_scores(weights: str, pool: Sequence[PoolFrame], candidates: Sequence[int],
                        names: Sequence[str], work: Path, imgsz: int,
                        class_weights: dict[str, float] | None = None) -> dict[int, float]:
    """The active-learning score of every candidate pool frame under the student ``weights``:
    the disagreement score, or with ``class_weights`` the class-balanced labelling priority."""
    from cv_autolabel.core.disagreement import compare  # noqa: PLC0415
    from cv_autolabel.core.instances import Instances  # noqa: PLC0415
    from cv_autolabel.core.segmenters import create_segmenter  # noqa: PLC0415
    from cv_autolabel.core.selection import labelling_priority  # noqa: PLC0415
    from cv_autolabel.tools.export import export_openvino  # noqa: PLC0415

    if work.exists():
        shutil.rmtree(work)
    fp32, _ = export_openvino(Path(weights), None, work, imgsz=imgsz, int8=False)
    student = create_segmenter("yolo", model_dir=fp32)
    scores = {}
    for i in candidates:
        f = pool[i]
        rgb = cv2.cvtColor(cv2.imread(str(f.image)), cv2.COLOR_BGR2RGB)
        teacher = Instances.from_label_image(f.labels, f.classes, names)
        result = compare(student.segment(rgb), teacher)
        scores[i] = (result.score if class_weights is None
                     else labelling_priority(result, class_weights))
    return scores


def _per_class(result: dict[str, Any]) -> str:
    per_class = result.get("map_per_class") or {}
    if not per_class:
        return ""
    return "[" + ", ".join(f"{c} {v:.3f}" for c, v in per_class.items()) + "] "


def _took(result: dict[str, Any]) -> str:
    return "(resumed)" if result.get("resumed") else f"({result['train_s']} s)"


def pick(arm: str, scores: dict[int, float], pool: Sequence[PoolFrame], k: int,
         rng: np.random.Generator) -> list[int]:
    """The ``k`` pool frames ``arm`` labels next, from the candidates' disagreement ``scores``."""
    from cv_autolabel.core.selection import select_diverse  # noqa: PLC0415

    if arm in ("disagreement", "balanced"):
        return top_scores(scores, k, rng)
    keys = list(scores)
    chosen = select_diverse([scores[i] for i in keys],
                            np.stack([pool[i].embedding for i in keys]), k,
                            seed=int(rng.integers(2**31)))
    return [keys[j] for j in chosen]


def run_seed(seed: int, pool: list[PoolFrame], test_images: Path, names: Sequence[str],
             work: Path, args: argparse.Namespace, log: Any,
             init: str = "yolo11n-seg.yaml",
             earlier: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    initial = rng.choice(len(pool), args.seed_size, replace=False).tolist()
    log(f"seed {seed}: round 0, {len(initial)} labelled, training from {Path(init).name} ...")
    first = {"picked": [pool[i].name for i in initial],
             "picked_holding": frames_holding([pool[i] for i in initial], names)}
    first |= train_round(work / f"seed{seed}" / "round0", [pool[i] for i in initial],
                         test_images, names, init=init, args=args, seed=seed,
                         earlier=earlier)
    log(f"   mask mAP50-95 {first['map']:.3f} {_per_class(first)}{_took(first)}")
    out: dict[str, list[dict[str, Any]]] = {}
    for arm in args.arms:
        arm_rng = np.random.default_rng([seed, ARMS.index(arm)])
        labelled, rounds = list(initial), [dict(first)]
        for r in range(1, args.rounds + 1):
            taken = set(labelled)
            rest = [i for i in range(len(pool)) if i not in taken]
            if arm == "random":
                picked = arm_rng.choice(rest, min(args.budget, len(rest)), replace=False).tolist()
            else:
                balance = None
                if arm == "balanced":
                    from cv_autolabel.core.selection import class_balance_weights  # noqa: PLC0415

                    counts = labelled_counts([pool[i] for i in labelled], names)
                    before = earlier_counts(earlier, names)  # train_instances on the robot
                    balance = class_balance_weights(
                        {c: n + before[c] for c, n in counts.items()}, names)
                scores = disagreement_scores(rounds[-1]["weights"], pool, rest, names,
                                             work / f"seed{seed}" / arm / f"student{r}",
                                             args.imgsz, balance)
                picked = pick(arm, scores, pool, args.budget, arm_rng)
                log(f"   {arm} round {r}: picked scores {np.mean([scores[i] for i in picked]):.2f} "
                    f"mean (pool mean {np.mean(list(scores.values())):.2f}), from "
                    f"{len({pool[i].name.split('_')[0] for i in picked})} recordings")
            labelled += picked
            result = {"picked": [pool[i].name for i in picked],
                      "picked_holding": frames_holding([pool[i] for i in picked], names)}
            result |= train_round(work / f"seed{seed}" / arm / f"round{r}",
                                  [pool[i] for i in labelled], test_images, names,
                                  init=rounds[-1]["weights"], args=args, seed=seed,
                                  earlier=earlier)
            log(f"   {arm} round {r}: {len(labelled)} labelled, mask mAP50-95 "
                f"{result['map']:.3f} {_per_class(result)}{_took(result)}; picked "
                + ", ".join(f"{n} {c}" for c, n in result["picked_holding"].items()))
            rounds.append(result)
        out[arm] = rounds
    return out


# -- retraining recorded selections with more compute ---------------------------------------------

#: the settings a retrain takes from the recorded run: they rebuild its pool, test set and
#: seed model (all deterministic), so the recorded frame names mean the same frames
_RECORDED = ("seed_size", "budget", "pool_bags", "test_bags", "test_every", "frames", "width",
             "height", "imgsz", "init", "pretrain_epochs", "scenario", "rare_bags")


def labelled_sets(rounds: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The frames each recorded round had labelled: its picks and every earlier round's.

    Example:
        >>> labelled_sets([{"picked": ["a", "b"]}, {"picked": ["c"]}])
        [['a', 'b'], ['a', 'b', 'c']]
    """
    sets: list[list[str]] = []
    for r in rounds:
        sets.append((sets[-1] if sets else []) + list(r["picked"]))
    return sets


def read_results(path: Path, option: str) -> dict[str, Any]:
    """A results.json given to ``option``; SystemExit with a one-line reason when it is
    missing or not JSON (checked before any training, not after hours of it)."""
    if not path.is_file():
        raise SystemExit(f"{option}: {path} does not exist (yet)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SystemExit(f"{option}: {path} is not a results file ({err})") from None


def adopt_recorded_settings(recorded: dict[str, Any], args: argparse.Namespace) -> None:
    """Set ``args``' world, pool and seed-model settings to a recorded run's (``--retrain``);
    ``--iters``, ``--seeds``, ``--arms`` and ``--rounds`` stay the caller's."""
    settings = recorded["settings"]
    missing = [k for k in _RECORDED if k not in settings]
    if missing or not all("picked" in r for arms in recorded["runs"].values()
                          for rounds in arms.values() for r in rounds):
        raise SystemExit("--retrain: the results file does not record "
                         + (", ".join(missing) if missing else "each round's picked frames")
                         + " (runs before 2026-11-21 did not)")
    for k in _RECORDED:
        setattr(args, k, settings[k])
    args.keep_earlier = settings.get("keep_earlier", _OLD_DEFAULTS["keep_earlier"])
    args.arms = [a for a in args.arms if a in recorded["runs"]]
    if "random" not in args.arms:
        raise SystemExit("--retrain: the results file has no random arm to compare against")
    args.seeds = [s for s in args.seeds if str(s) in recorded["runs"]["random"]]
    if not args.seeds:
        raise SystemExit("--retrain: none of --seeds is in the results file")


def retrain_order(arms: Sequence[str], rounds: int,
                  only: Sequence[int] | None = None) -> list[tuple[str, int]]:
    """The (arm, round) pairs a retrain trains, in an order that gives a run stopped early
    what the verdict needs first: the seed round, random's final round (the bar), the
    selection arms' rounds from the first on, then random's other rounds."""
    picked = [r for r in range(rounds + 1) if not only or r in only]
    last = picked[-1]

    def rank(task: tuple[str, int]) -> tuple[int, int, int]:
        arm, r = task
        stage = (0 if r == 0 else 1 if arm == "random" and r == last
                 else 3 if arm == "random" else 2)
        return stage, list(arms).index(arm), r

    return sorted(((arm, r) for arm in arms for r in picked), key=rank)


def retrain_recorded(recorded: dict[str, Any], pool: list[PoolFrame], test_images: Path,
                     names: Sequence[str], work: Path, args: argparse.Namespace, log: Any,
                     init: str, earlier: Path | None = None
                     ) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Each recorded round's labelled frames, trained afresh from the seed model ``init``
    with ``args.iters`` images seen, and scored on the test set: what those labels are worth
    once training is no longer the bottleneck. The selections are the recorded ones (made by
    the run's own students); only the training that scores them changes. Every round is
    cached as it finishes (:func:`train_round`), so a stopped run loses only the one in hand."""
    by_name = {f.name: f for f in pool}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        done: dict[tuple[str, int], dict[str, Any]] = {}
        for arm, r in retrain_order(args.arms, args.rounds, args.only_rounds):
            rounds = recorded["runs"][arm][str(seed)]
            labelled = labelled_sets(rounds[:r + 1])[-1]
            missing = [n for n in labelled if n not in by_name]
            if missing:
                raise SystemExit(f"--retrain: {arm} seed {seed} round {r} labelled "
                                 f"{missing[:3]}, not in the rebuilt pool: not the same world")
            frames = [by_name[n] for n in labelled]
            # round 0 is the seed set, the same in every arm: trained once
            root = work / f"seed{seed}" / ("round0" if r == 0 else f"{arm}/round{r}")
            result = {"round": r, "picked": rounds[r]["picked"],
                      "picked_holding": rounds[r].get("picked_holding", {}),
                      "recorded_map": rounds[r]["map"]}
            trained = train_round(root, frames, test_images, names, init=init, args=args,
                                  seed=seed, earlier=earlier, cached_only=args.cached_only)
            if trained is None:
                log(f"   seed {seed} {arm} round {r}: not trained yet (--cached-only)")
                continue
            result |= trained
            log(f"   seed {seed} {arm} round {r}: {len(frames)} labelled, retrained "
                f"{result['epochs']} epochs: mask mAP50-95 {result['map']:.3f} (recorded "
                f"{result['recorded_map']:.3f}) {_per_class(result)}{_took(result)}")
            done[arm, r] = result
        for arm in args.arms:
            runs[arm][seed] = [done[a, r] for a, r in sorted(done) if a == arm]
    if not all(runs["random"].values()):
        raise SystemExit("--retrain: random selection has no round trained yet")
    return {arm: by_seed for arm, by_seed in runs.items() if all(by_seed.values())}


_SAME_SETTINGS = ("seeds", "rounds", "seed_size", "budget", "iters", "pool_bags", "test_bags",
                  "test_every", "frames", "width", "height", "imgsz", "init", "pretrain_epochs",
                  "scenario", "rare_bags", "quick", "keep_earlier")
#: settings added later, as the runs before them had them
_OLD_DEFAULTS = {"keep_earlier": False}


def check_merge_settings(earlier: dict[str, Any], args: argparse.Namespace) -> None:
    """Raise SystemExit unless ``earlier`` (a results.json) ran with the settings of ``args``."""
    settings = earlier["settings"]
    differ = [k for k in _SAME_SETTINGS if k != "rounds"
              and settings.get(k, _OLD_DEFAULTS.get(k, getattr(args, k))) != getattr(args, k)]
    if settings.get("rounds", args.rounds) < args.rounds:
        differ.append("rounds (the earlier run has fewer)")
    if differ:
        raise SystemExit(f"--merge: settings differ: {', '.join(differ)}")


def merge_runs(runs: dict[str, dict[int, list[dict[str, Any]]]], earlier: dict[str, Any],
               args: argparse.Namespace) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``runs`` plus the arms of an ``earlier`` results.json that were not run now (their
    first ``args.rounds`` rounds: an earlier run may have gone on longer).

    Raises SystemExit when the earlier run's settings differ, or its round 0 does not match.
    """
    check_merge_settings(earlier, args)
    merged = dict(runs)
    for arm, by_seed in earlier["runs"].items():
        if arm in merged:
            continue
        merged[arm] = {int(seed): rounds[:args.rounds + 1] for seed, rounds in by_seed.items()}
        for seed, rounds in merged[arm].items():
            mine = next(iter(runs.values()))[seed][0]["map"]
            if abs(rounds[0]["map"] - mine) > 1e-6:
                raise SystemExit(f"--merge: seed {seed} round 0 differs ({rounds[0]['map']} vs "
                                 f"{mine}): not the same seed model")
    return {arm: merged[arm] for arm in ARMS if arm in merged}


# -- report ---------------------------------------------------------------------------------------

def table(summary: dict[str, Any]) -> str:
    """Markdown table of mean ± std mask mAP per round and arm, then per class (means); a
    round an arm has no result for (a retrain stopped early) shows "–"."""
    curves = summary["curves"]
    arms = list(curves)
    classes = list(curves["random"].get("class_map_mean", {}))
    at = {a: {r: i for i, r in enumerate(c.get("round", range(len(c["labelled"]))))}
          for a, c in curves.items()}
    head = "| round | labelled |" + "".join(f" {a} |" for a in arms)
    head += "".join(f" {c}: {' / '.join(arms)} |" for c in classes)
    lines = [head, "|---:|---:|" + "---:|" * (len(arms) + len(classes))]

    def cell(a: str, r: int, value: Any) -> str:
        return "–" if r not in at[a] else value(curves[a], at[a][r])

    for r in sorted({r for rounds in at.values() for r in rounds}):
        n = next(curves[a]["labelled"][at[a][r]] for a in arms if r in at[a])
        row = f"| {r} | {n:.0f} |" + "".join(
            " " + cell(a, r, lambda c, i: f"{c['map_mean'][i]:.3f} ± {c['map_std'][i]:.3f}")
            + " |" for a in arms)
        row += "".join(" " + " / ".join(
            cell(a, r, lambda c, i, cls=cls: f"{c['class_map_mean'][cls][i]:.3f}")
            for a in arms) + " |" for cls in classes)
        lines.append(row)
    return "\n".join(lines)


def seed_table(runs: dict[str, dict[Any, list[dict[str, Any]]]]) -> str:
    """Markdown table of each seed's mask mAP per arm and round: what the means average,
    and the rounds only some seeds have ("–" where a seed has none)."""
    at = {(arm, str(seed)): _by_round(rounds)
          for arm, by_seed in runs.items() for seed, rounds in by_seed.items()}
    labelled = {n: r["labelled"] for rounds in at.values() for n, r in rounds.items()}
    numbers = sorted(labelled)
    lines = ["| seed | arm |" + "".join(f" round {n} ({labelled[n]:.0f}) |" for n in numbers),
             "|---:|---|" + "---:|" * len(numbers)]
    for arm, seed in sorted(at, key=lambda k: (int(k[1]), list(runs).index(k[0]))):
        lines.append(f"| {seed} | {arm} |" + "".join(
            f" {at[arm, seed][n]['map']:.3f} |" if n in at[arm, seed] else " – |"
            for n in numbers))
    return "\n".join(lines)


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """One line per selection arm: labels it needs to reach random's final mAP (mean
    curves), and the same ratio seed by seed."""
    lines = []
    for arm, v in summary["arms"].items():
        ratio = v["label_ratio"]
        per_seed = ", ".join(f"{seed}: " + ("never" if r is None else f"{r:.0%}")
                             for seed, r in v["label_ratio_per_seed"].items())
        lines.append(f"{arm} reaches random's final mask mAP50-95 "
                     f"{summary['random_final_map']:.3f} ({summary['random_final_labels']:.0f} "
                     "labels) with " + ("never (within these rounds)" if ratio is None else
                                        f"{v['labels_to_reach']:.0f} labels ({ratio:.0%}); "
                                        f"target <= {summary['target_ratio']:.0%}: "
                                        f"{'met' if v['target_met'] else 'not met'}")
                     + f" [per seed {per_seed}]")
    return lines


def plot(summary: dict[str, Any], runs: dict[str, Any], path: Path, init: str,
         scenario: str) -> None:
    """Mean test mAP against labelled images per arm (± std band); with per-class results,
    a second panel per class (the rare class is where selection shows)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    curves = summary["curves"]
    classes = list(curves["random"].get("class_map_mean", {}))
    fig, axes = plt.subplots(1, 2 if classes else 1, figsize=(11 if classes else 6.4, 4.2),
                             dpi=120, squeeze=False)
    ax = axes[0][0]
    colours = {"random": "tab:gray", "disagreement": "tab:red", "diverse": "tab:blue",
               "balanced": "tab:green"}
    for arm, c in curves.items():
        x, y, s = (np.array(c[k]) for k in ("labelled", "map_mean", "map_std"))
        ax.plot(x, y, "o-", color=colours[arm],
                label=f"{arm} (mean of {len(runs[arm])} seeds; dots: each seed)")
        ax.fill_between(x, y - s, y + s, color=colours[arm], alpha=0.15)
        seeds = [r for rounds in runs[arm].values() for r in rounds]  # each seed's own rounds
        ax.scatter([r["labelled"] for r in seeds], [r["map"] for r in seeds], s=10,
                   color=colours[arm], alpha=0.4, zorder=3)
        reach = summary["arms"].get(arm, {}).get("labels_to_reach")
        if reach is not None:
            ax.axvline(reach, color=colours[arm], ls=":", lw=1)
    ax.axhline(summary["random_final_map"], color="tab:gray", ls=":", lw=1,
               label="random's final mAP")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test mask mAP50-95")
    ax.set_title(f"Label efficiency, {scenario} pool (seed model: {init})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if classes:
        ax = axes[0][1]
        styles = dict(zip(classes, ("o-", "s--", "^-.", "v:")))
        for arm, c in curves.items():
            for cls in classes:
                ax.plot(c["labelled"], c["class_map_mean"][cls], styles[cls],
                        color=colours[arm], label=f"{cls}, {arm}")
        ax.set_xlabel("labelled images")
        ax.set_ylabel("test mask mAP50-95 (mean over seeds)")
        ax.set_title("per class")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(result: dict[str, Any], png: Path) -> None:
    """Plot a results.json's curves to ``png`` and print its table and verdicts (summarised
    again from its runs, so older files read the same as new ones)."""
    summary = summarise(result["runs"])
    plot(summary, result["runs"], png, result["settings"].get("init", "scratch"),
         result["settings"].get("scenario", "uniform"))
    print("\n" + table(summary) + "\n")
    if len(next(iter(result["runs"].values()))) > 1:
        print(seed_table(result["runs"]) + "\n")
    if not summary["learned"]:
        print("random selection's model did not improve on the seed model: no verdict")
    print("\n".join(verdict_lines(summary)))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=None,
                   help="selection rounds after the seed set (default 3; with --retrain, "
                        "the recorded run's)")
    p.add_argument("--seed-size", type=int, default=24, help="random seed set (labelled)")
    p.add_argument("--budget", type=int, default=24, help="frames labelled per round")
    p.add_argument("--iters", type=int, default=1500,
                   help="images seen per training (epochs = iters / labelled)")
    p.add_argument("--pool-bags", type=int, default=12,
                   help="pool recordings (dedup keeps about 1 frame in 10)")
    p.add_argument("--test-bags", type=int, default=2)
    p.add_argument("--test-every", type=int, default=3, help="test set: every n-th frame")
    p.add_argument("--frames", type=int, default=300, help="frames per recording")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--init", choices=["scratch", "pretrained", "stock"], default="scratch",
                   help="seed model: from the config, pretrained on other objects, or "
                        "trained on the usual stock (red cans) but no blue cans")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--scenario", choices=["uniform", "longtail"], default="uniform",
                   help="pool: both classes in every recording, or blue cans (a new product) "
                        "in only --rare-bags of them; the test set always holds both")
    p.add_argument("--rare-bags", type=int, default=2,
                   help="longtail: pool recordings that hold blue cans")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cv_bench_al")
    p.add_argument("--work", type=Path, default=None,
                   help="where the rounds are trained and cached (default: a folder of "
                        "--cache named after the settings); the cache key holds its path")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                   help="selection arms to run (random is needed for the verdict)")
    p.add_argument("--merge", type=Path, default=None,
                   help="an earlier results.json with the same settings: its arms that are "
                        "not run now join the table (training is deterministic per seed, so "
                        "round 0 is the same model)")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every round (default: rounds already trained with the same "
                        "inputs in the cache are read back)")
    p.add_argument("--retrain", type=Path, default=None, metavar="RESULTS_JSON",
                   help="select nothing: train each round's labelled frames recorded in "
                        "RESULTS_JSON afresh from its seed model with --iters images seen "
                        "(its world and pool settings are taken from the file) and score them")
    p.add_argument("--device", default="cpu",
                   help="torch device for training (cpu, 0, cuda:0): a GPU trains a round in a "
                        "minute or two; its models differ from a CPU's in the last digits, so "
                        "compare arms within one run")
    p.add_argument("--cached-only", action="store_true",
                   help="with --retrain: train nothing, table the rounds already trained "
                        "(a retrain stopped early)")
    p.add_argument("--only-rounds", type=int, nargs="+", default=None, metavar="R",
                   help="with --retrain: only these rounds (keep the last for random's final)")
    p.add_argument("--quick", action="store_true",
                   help="plumbing check: 1 seed, 1 round, tiny trainings")
    p.add_argument("--report", type=Path, default=None, metavar="RESULTS_JSON",
                   help="train nothing: redraw RESULTS_JSON's plot beside it and print its "
                        "table and verdicts")
    args = p.parse_args(argv)
    args.keep_earlier = args.init == "stock"  # a later turn trains on the earlier labels too
    recorded = None
    if args.retrain:
        if args.merge or args.quick:
            raise SystemExit("--retrain takes neither --merge nor --quick")
        recorded = read_results(args.retrain, "--retrain")
        adopt_recorded_settings(recorded, args)
    if args.rounds is None:
        args.rounds = recorded["settings"]["rounds"] if recorded else 3
    if args.report:
        result = read_results(args.report, "--report")
        png = args.report.with_name(args.report.stem.replace("results", "label_efficiency", 1)
                                    + ".png")
        report(result, png)
        return result
    if args.quick:
        args.seeds, args.rounds, args.iters, args.frames = [0], 1, 48, 80
        args.pool_bags, args.test_bags, args.seed_size, args.budget = 4, 1, 6, 6
        args.pretrain_epochs = 1
    earlier = None
    if args.merge:  # checked before hours of training, not after
        earlier = read_results(args.merge, "--merge")
        check_merge_settings(earlier, args)

    os.environ.setdefault("YOLO_OFFLINE", "1")
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.0f} s] {msg}", flush=True)

    names = TARGETS
    per_class = (3, 5, 4, 6)
    pool_bags = [_sim(args.cache, 1000 + i, args, per_class[i % 4],
                      pool_classes(args.scenario, i, args.rare_bags))
                 for i in range(args.pool_bags)]
    test_bags = [_sim(args.cache, 2000 + i, args, per_class[(i + 1) % 4])
                 for i in range(args.test_bags)]
    log(f"recordings ready: {len(pool_bags)} pool, {len(test_bags)} test")
    init = pretrain(args.cache, args, log) if args.init != "scratch" else "yolo11n-seg.yaml"
    stock_labels = pretrain_dir(args.cache, args) / "data" / "images" if args.keep_earlier else None
    suffix = (("_quick" if args.quick else "")
              + ("" if args.init == "scratch" else f"_{args.init}")
              + ("_longtail" if args.scenario == "longtail" else "")
              + ("" if args.pool_bags == p.get_default("pool_bags") or args.quick
                 else f"_pool{args.pool_bags}"))
    if recorded is not None:  # named after the run it retrains, and kept apart from it
        suffix = args.retrain.stem.removeprefix("results") + f"_retrained{args.iters}"
    work = args.work or args.cache / f"work{suffix}"
    held = hold_work(work)  # noqa: F841  one run at a time: its pool/ and test/ are rebuilt
    for old in work.iterdir() if args.fresh else ():  # all but the lock this run holds
        if old.is_dir():
            shutil.rmtree(old)
        elif old.name != ".lock":
            old.unlink()
    for rebuilt in ("pool", "test"):  # deterministic; rounds already trained are kept
        shutil.rmtree(work / rebuilt, ignore_errors=True)
    pool = build_pool(pool_bags, work / "pool", names)
    test_images = write_yolo_frames(test_bags, work / "test", names, every=args.test_every,
                                    prefix="t")
    holding = frames_holding(pool, names)
    log(f"pool: {len(pool)} novel frames of {len(pool_bags) * args.frames} ("
        + ", ".join(f"{c} in {n}" for c, n in holding.items())
        + f"); test: {len(list(test_images.iterdir()))} frames")
    if recorded is not None:
        runs = retrain_recorded(recorded, pool, test_images, names, work, args, log, init,
                                stock_labels)
    else:
        runs = {arm: {} for arm in args.arms}
        for seed in args.seeds:
            for arm, rounds in run_seed(seed, pool, test_images, names, work, args, log,
                                        init, stock_labels).items():
                runs[arm][seed] = rounds
    args.out.mkdir(parents=True, exist_ok=True)
    if earlier is not None:  # keep what was run even if the merge is refused
        (args.out / f"runs{suffix}_{'+'.join(args.arms)}.json").write_text(
            json.dumps(runs, indent=2) + "\n")
        runs = merge_runs(runs, earlier, args)
    summary = summarise(runs)
    from cv_autolabel.tools.machine import cpu_model  # noqa: PLC0415

    result = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_model(),
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items()},
              "pool_frames": len(pool), "pool_frames_holding": holding,
              "test_frames": len(list(test_images.iterdir())),
              "runs": runs, "summary": summary,
              "duration_s": round(time.perf_counter() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    report(result, args.out / f"label_efficiency{suffix}.png")
    log(f"done in {math.ceil(time.perf_counter() - started)} s")
    return result


if __name__ == "__main__":
    main()
