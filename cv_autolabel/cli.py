"""``cv-autolabel``: the offline half of cv_autolabel, one subcommand per job.

Contract shared by every subcommand: ``--help``; exit code 0 on success; on failure a single
``error: …`` line on stderr and a non-zero exit code; ``--json`` prints one JSON object
summarising the result as the last line of stdout. Progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from cv_autolabel import __version__
from cv_autolabel.config import NAMESPACE, camera_topics, load_parameters
from cv_autolabel.errors import CvAutolabelError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line ``error: …`` contract for usage errors."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "frame"):
    """Yield an ``advance(n)`` callable drawing a tqdm bar on stderr (hidden when not a TTY)."""
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True,
              file=sys.stderr) as bar:
        yield bar.update


def warn(message: str) -> None:
    """Print a one-line warning on stderr."""
    sys.stderr.write(f"warning: {message}\n")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print a JSON summary as the last line of stdout")
    parser.add_argument("--config", type=Path, default=None,
                        help="ROS 2 parameter YAML shared with the nodes (config/autolabel.yaml)")


def _add_topics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--color-topic", help="colour image topic (default: from --config, "
                        "else /camera/camera/color/image_raw)")
    parser.add_argument("--depth-topic", help="aligned depth topic ('' for none)")
    parser.add_argument("--info-topic", help="camera_info topic ('' for none)")
    parser.add_argument("--slop", type=float, default=None,
                        help="sync slop in seconds (default: config, else 0.05)")


def _topics_from(args: argparse.Namespace) -> tuple[Any, float]:
    params = load_parameters(args.config)
    topics = camera_topics(params)
    overrides = {"color": args.color_topic, "depth": args.depth_topic, "info": args.info_topic}
    values = {k: (v or None) if v is not None else getattr(topics, k)
              for k, v in overrides.items()}
    if not values["color"]:
        raise CvAutolabelError("a colour topic is required")
    slop = args.slop if args.slop is not None else float(params.get("camera.sync_slop_s", 0.05))
    return type(topics)(**values), slop


# -- subcommands ------------------------------------------------------------------------------
def cmd_sim(args: argparse.Namespace) -> dict[str, Any]:
    """Render the synthetic bin world into a ROS 2 bag."""
    from cv_autolabel.tools.sim.run import SimConfig, simulate  # noqa: PLC0415

    config = SimConfig(
        frames=args.frames, width=args.width, height=args.height, fps=args.fps, seed=args.seed,
        classes=tuple(_csv(args.classes)), distractors=tuple(_csv(args.distractors)),
        per_class=args.per_class, n_distractors=args.n_distractors, scenes=args.scenes,
        storage=args.storage)
    with progress_bar(args.frames, "sim") as advance:
        summary = simulate(config, args.out, overwrite=args.overwrite, progress=advance)
    print(f"wrote {summary['frames']} frames ({config.width}x{config.height}, "
          f"{summary['scenes']} scene(s), {summary['picks']} pick(s)) to {args.out} "
          f"[{config.storage}] in {summary['seconds']} s")
    return summary


def cmd_extract(args: argparse.Namespace) -> dict[str, Any]:
    """Write a bag's synchronised frames as colour images, 16-bit depth PNGs and an index."""
    from cv_autolabel.tools.extract import extract  # noqa: PLC0415

    topics, slop = _topics_from(args)
    with progress_bar(None, "extract") as advance:
        summary = extract(args.bag, args.out, topics=topics, image_format=args.format,
                          every=args.every, overwrite=args.overwrite, slop_s=slop,
                          progress=advance, warn=warn)
    if summary["rejected"]:
        warn(f"dropped {summary['rejected']} malformed frame set(s): {summary['errors']}")
    print(f"extracted {summary['frames']} frames from {args.bag} to {args.out} "
          f"(index: {args.out / 'index.jsonl'})")
    return summary


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    """Summarise a bag: topics, types, message counts, duration."""
    from cv_autolabel.ros.bag import BagReader  # noqa: PLC0415

    with BagReader(args.bag) as bag:
        topics, stats = bag.topics, bag.summary()
        summary = {"bag": str(args.bag), "messages": stats["messages"],
                   "duration_s": round(stats["duration_ns"] / 1e9, 3),
                   "start_ns": stats["start_ns"], "damaged": bag.damage is not None,
                   "damage": bag.damage,
                   "topics": {t: {"type": ty, "count": n} for t, (ty, n) in topics.items()}}
    if bag.damage:
        warn(f"{args.bag}: {bag.damage}")
    print(f"{args.bag}: {summary['messages']} messages over {summary['duration_s']} s")
    width = max((len(t) for t in topics), default=0)
    for topic, (msgtype, count) in sorted(topics.items()):
        print(f"  {topic:<{width}}  {count:>7}  {msgtype}")
    return summary


def cmd_dedup(args: argparse.Namespace) -> dict[str, Any]:
    """Keep the novel frames of a bag or an image folder (same engine as the dedup node)."""
    from cv_autolabel.core.dedup import DedupSettings  # noqa: PLC0415
    from cv_autolabel.tools.dedup import run_dedup  # noqa: PLC0415

    params = load_parameters(args.config, "dedup_node")
    base = DedupSettings.from_params(params)
    settings = DedupSettings(**{**base.__dict__, **{
        k: v for k, v in {"embedder": args.embedder, "weights": args.weights,
                          "precision": args.precision, "threshold": args.threshold}.items()
        if v is not None}})
    topics, slop = _topics_from(args)
    with progress_bar(None, "dedup") as advance:
        summary = run_dedup(args.src, db=str(args.db), out=args.out, settings=settings,
                            topics=topics, slop_s=slop, progress=advance, warn=warn)
    if summary["rejected"]:
        warn(f"skipped {summary['rejected']} unreadable frame(s): {summary['errors']}")
    print(f"kept {summary['frames_kept']} of {summary['frames_in']} frames "
          f"({summary['frames_per_second']} frames/s, {summary['embedder']}); "
          f"{summary['stored_total']} stored in {args.db}, frames in {args.out}")
    return summary


def cmd_replay(args: argparse.Namespace) -> dict[str, Any]:
    """Run the detector over a bag and write its outputs (3D/2D detections, markers,
    debug images) to a new bag, in recorded time order."""
    from cv_autolabel.tools.replay import replay  # noqa: PLC0415

    topics, slop = _topics_from(args)
    if args.active_learning:
        return _replay_active_learning(args, topics, slop)
    if args.out is None:
        raise CvAutolabelError("--out OUT_BAG is required (or --active-learning --queue DIR)")
    with progress_bar(None, "replay") as advance:
        summary = replay(args.bag, args.out, segmenter=args.segmenter, model=args.model,
                         topics=topics, slop_s=slop, namespace=args.namespace,
                         storage=args.storage, overwrite=args.overwrite,
                         debug_image=not args.no_debug_image, progress=advance, warn=warn)
    if summary["rejected"]:
        warn(f"dropped {sum(summary['rejected'].values())} frame set(s): {summary['rejected']}")
    print(f"replayed {summary['sets']} frame sets with {summary['segmenter']}: "
          f"{summary['objects']} objects ({summary['invalid_objects']} without usable depth), "
          f"p50 {summary['latency_ms_p50']} ms/frame; wrote {args.out}")
    return summary


def _replay_active_learning(args: argparse.Namespace, topics: Any, slop: float
                            ) -> dict[str, Any]:
    from cv_autolabel.tools.replay import replay_active_learning  # noqa: PLC0415

    if args.queue is None:
        raise CvAutolabelError("--active-learning needs --queue DIR")
    weights, prompts = _teacher_settings(args)
    with progress_bar(None, "active learning") as advance:
        summary = replay_active_learning(
            args.bag, args.queue, teacher=args.teacher, teacher_weights=weights,
            prompts=prompts, model=args.model, topics=topics, slop_s=slop,
            workspace=args.workspace, progress=advance, warn=warn)
    print(f"{summary['frames_in']} frames, {summary['novel']} novel, {summary['queued']} queued "
          f"for labelling ({summary['agreed']} agreed); queue {args.queue}")
    return summary


def _teacher_settings(args: argparse.Namespace
                      ) -> tuple[Path | None, dict[str, list[str]] | None]:
    """The teacher's weights and prompts from the flags and ``--config``.

    SAM3's weights: ``--teacher-weights``, else ``$CV_AUTOLABEL_SAM3``, else the config's
    ``teacher_weights``, else the default path (None lets the teacher look there).
    """
    from cv_autolabel.core.teachers.sam3 import WEIGHTS_ENV  # noqa: PLC0415

    params = load_parameters(args.config, "active_learning_node")
    weights = args.teacher_weights
    if weights is None and not os.environ.get(WEIGHTS_ENV) \
            and params.get("teacher_weights"):
        weights = Path(str(params["teacher_weights"])).expanduser()
    return weights, _prompts(params)


def _prompts(params: dict[str, Any]) -> dict[str, list[str]] | None:
    classes = params.get("classes")
    if not classes:
        return None
    from cv_autolabel.core.teachers.sam3 import default_prompt  # noqa: PLC0415

    return {c: list(params.get(f"prompts.{c}") or [default_prompt(c)]) for c in classes}


def cmd_flush(args: argparse.Namespace) -> dict[str, Any]:
    """Export the queue's pending frames as a CVAT-ready COCO 1.0 zip (and mark them)."""
    from cv_autolabel.core.annotation_queue import AnnotationQueue  # noqa: PLC0415
    from cv_autolabel.core.coco import flush  # noqa: PLC0415

    if args.diverse and args.limit is None:
        raise CvAutolabelError("--diverse chooses among the queue: give --limit N too")
    if not (args.queue / "queue.sqlite3").exists():
        raise CvAutolabelError(f"{args.queue} is not an annotation queue (no queue.sqlite3)")
    with AnnotationQueue(args.queue) as queue:
        names = _csv(args.classes) if args.classes else _queue_classes(queue, args.config)
        result = flush(queue, args.out, class_names=names, limit=args.limit,
                       diverse=args.diverse)
        if args.review is not None and result.images:
            from cv_autolabel.components.active_learning import review_batch  # noqa: PLC0415

            result = dataclasses.replace(result,
                                         review_images=review_batch(queue, result, args.review))
            if result.review_images < result.images:
                warn(f"wrote {result.review_images} of {result.images} review images to "
                     f"{args.review} (see the log); the batch itself is complete")
    summary = {k: (str(v) if isinstance(v, Path) else v)
               for k, v in dataclasses.asdict(result).items()}
    summary["review_images"] = result.review_images or 0
    if result.images:
        print(f"wrote {result.images} images with {result.annotations} annotations "
              f"({result.class_counts()}) to {args.out}: import it into CVAT as 'COCO 1.0'")
    else:
        print("nothing pending in the queue; no zip written")
    return summary


def _queue_classes(queue: Any, config: Path | None) -> list[str]:
    prompts = _prompts(load_parameters(config, "active_learning_node"))
    if prompts:
        return list(prompts)
    names: list[str] = []
    for entry in queue.pending():
        names += [n for n in entry.teacher.class_names if n not in names]
    return names


def cmd_preannotate(args: argparse.Namespace) -> dict[str, Any]:
    """Run a teacher (SAM3, or a synthetic bag's ground truth) over an image folder or a bag
    and write a CVAT-ready COCO 1.0 zip. Resumable (re-run with the same arguments), and
    shardable over machines with --shard i/n; --merge ZIP... merges shard zips into --out."""
    from cv_autolabel.tools.preannotate import merge_zips, parse_shard, preannotate  # noqa: PLC0415

    if args.merge:
        summary = merge_zips(args.merge, args.out)
        print(f"merged {len(args.merge)} zips: {summary['images']} images with "
              f"{summary['annotations']} annotations in {args.out}")
        return summary
    if args.src is None:
        raise CvAutolabelError("SRC is required (or --merge ZIP ZIP ...)")
    weights, prompts = _teacher_settings(args)
    topics, slop = _topics_from(args)
    with progress_bar(None, "preannotate") as advance:
        summary = preannotate(args.src, args.out, teacher=args.teacher, teacher_weights=weights,
                              prompts=prompts, work=args.work,
                              shard=parse_shard(args.shard), merge_iou=args.merge_iou,
                              topics=topics, slop_s=slop, progress=advance, warn=warn)
    if summary["unreadable"] or summary["failed"]:
        warn(f"skipped {summary['unreadable']} unreadable frame(s), teacher failed on "
             f"{summary['failed']}")
    print(f"shard {summary['shard']}: {summary['processed']} frames pre-annotated "
          f"({summary['skipped_done']} already done, {summary['instances']} instances) of "
          f"{summary['frames_in_shard']}; zip: {summary['zip'] or 'none (nothing to export)'}")
    return summary


def _listing(names: Sequence[str], shown: int = 5) -> str:
    """The first ``shown`` names, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def cmd_import_cvat(args: argparse.Namespace) -> dict[str, Any]:
    """Check a CVAT COCO 1.0 export and add it to DATASET as a new dataset version; then,
    unless --no-merge, merge it with DATASET's newest version into the next one, so the
    newest version (what 'prepare DATASET' takes) holds every image labelled so far.

    Unsafe zips (path traversal, links, zip bombs) are refused whole; malformed annotations
    and images are dropped one by one and reported. An image labelled again keeps its newest
    labels in the merge."""
    from cv_autolabel.core.cvat_import import load_cvat_zip  # noqa: PLC0415
    from cv_autolabel.core.dataset import (  # noqa: PLC0415
        create_version, list_versions, merge_versions)

    result = load_cvat_zip(args.zip)
    if not result.images:
        raise CvAutolabelError(f"{args.zip} holds no usable image")
    earlier = list_versions(args.into)
    version = create_version(args.into, result.coco, result.images, source=str(args.zip),
                             class_names=result.class_names)
    report = result.report
    for rejection in report.rejections:
        warn(f"rejected {rejection}")
    if report.unlabelled_images:
        warn(f"{len(report.unlabelled_images)} image(s) lost every annotation and are kept "
             f"as unlabelled (background) images, which teaches a model they hold nothing: "
             f"{_listing(report.unlabelled_images)}; fix them in CVAT and import again")
    if report.unreferenced_images or report.ignored_members:
        warn(f"ignored {len(report.unreferenced_images)} image(s) no annotation file lists "
             f"and {len(report.ignored_members)} other member(s): "
             f"{_listing(report.unreferenced_images + report.ignored_members)}")
    print(f"imported {report.images_accepted} images, {report.annotations_accepted} "
          f"annotations as {version.path} ({len(report.rejections)} rejected)")
    merged = None
    if earlier and not args.no_merge:
        merged = merge_versions(args.into, [earlier[-1], version.path])
        print(f"merged with {earlier[-1].name} into {merged.path}: "
              f"{len(merged.manifest['images'])} images")
    return {"version": str(version.path), "images": report.images_accepted,
            "annotations": report.annotations_accepted,
            "rejected": [str(r) for r in report.rejections],
            "unlabelled_images": report.unlabelled_images,
            "ignored": report.unreferenced_images + report.ignored_members,
            "class_names": list(version.class_names),
            "merged": str(merged.path) if merged else None,
            "merged_images": len(merged.manifest["images"]) if merged else None}


def cmd_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Split a dataset version into train/val/test (grouped by sequence), write YOLO
    segmentation labels, data.yaml and a class-distribution table and plot."""
    from cv_autolabel.core.dataset import list_versions  # noqa: PLC0415
    from cv_autolabel.tools.prepare import distribution_table, prepare  # noqa: PLC0415

    version = args.dataset
    if not (version / "manifest.json").exists():  # a dataset root: take its newest version
        versions = list_versions(version)
        if not versions:
            raise CvAutolabelError(f"{version} is neither a dataset version nor holds any")
        version = versions[-1]
    ratios = tuple(float(x) for x in args.split.split(","))
    summary = prepare(version, args.out, split=ratios, seed=args.seed)
    print(distribution_table(summary))
    for message in summary["warnings"]:
        warn(message)
    print(f"wrote {summary['data_yaml']} and {summary['plot']} from {version}")
    return summary


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    """Export MODEL (ultralytics .pt) to OpenVINO FP32 and INT8 (calibrated on DATA's train
    split), verify INT8's mask mAP50-95 against FP32 on the val split, write checksum manifests and
    verification.json, and on success optionally publish INT8 by re-pointing a symlink."""
    from cv_autolabel.tools.export import export  # noqa: PLC0415

    report = export(args.model, args.data, out=args.out, imgsz=args.imgsz,
                    tolerance=args.tolerance, samples=args.samples, publish=args.publish,
                    calibration_fraction=args.fraction)
    agree = report["agreement"]
    print(f"{report['message']}; INT8 matched {agree['matched']}/{agree['fp32_instances']} "
          f"FP32 instances on {agree['images']} images")
    print(f"wrote {report['out']}" + (f", published {report['published']}"
                                      if report["published"] else ""))
    return report


def cmd_publish(args: argparse.Namespace) -> dict[str, Any]:
    """Point the detector's model symlink at an exported model directory (e.g. an export's
    int8/ copied to the robot) once its checksum manifest verifies. Needs no torch: this is
    the robot's side of `export --publish`."""
    from cv_autolabel.core.model_slot import DEFAULT_MODEL_LINK, publish_model  # noqa: PLC0415

    link = args.link or Path(str(load_parameters(args.config, "detector_node").get(
        "model_path", DEFAULT_MODEL_LINK))).expanduser()
    manifest = publish_model(args.model_dir, link)
    print(f"published {args.model_dir} ({manifest.get('precision', '?')}, val mask mAP50-95 "
          f"{manifest.get('map50_95', '?')}) at {link}: a detector watching it reloads "
          "within its watch_period_s, or call its ~/reload service")
    return {"model_dir": str(Path(args.model_dir).expanduser().resolve()),
            "link": str(link), "manifest": {k: v for k, v in manifest.items()
                                                 if k != "files"}}


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train a YOLO segmentation model on a prepared data.yaml (offline: nothing is
    downloaded) and record the run in OUT/NAME/cv_autolabel_run.json."""
    from cv_autolabel.tools.train import train  # noqa: PLC0415

    summary = train(args.data_yaml, model=args.model, epochs=args.epochs, imgsz=args.imgsz,
                    batch=args.batch, out=args.out, name=args.name, seed=args.seed,
                    tracking=args.tracking, patience=args.patience, device=args.device,
                    dataset_version=args.dataset_version)
    mask = summary["metrics"].get("mask_map50_95")
    per_class = summary.get("mask_map50_95_per_class") or {}
    by_class = (" (" + ", ".join(f"{name} {value:.3f}" for name, value in per_class.items())
                + ")") if len(per_class) > 1 else ""
    tracked = summary["tracking"].get("offline_zip") or summary["tracking"]["mode"]
    print(f"trained {summary['epochs_completed']} epoch(s) in {summary['duration_s']} s: "
          f"mask mAP50-95 {mask if mask is not None else 'n/a'}{by_class}; best weights "
          f"{summary['best_weights']} (tracking: {tracked})")
    return summary


def cmd_status(args: argparse.Namespace) -> dict[str, Any]:
    """Show the flywheel's iterations (dataset version, labelled images, model, val mask mAP,
    disagreement rate) and plot mAP against labelled images."""
    from cv_autolabel.tools.status import iterations, plot, table  # noqa: PLC0415

    items = iterations(args.workspace)
    if not items:
        print(f"no iterations in {args.workspace} yet: run `cv-autolabel train` (or `make demo`)")
        return {"workspace": str(args.workspace), "iterations": [], "plot": None}
    print(table(items))
    figure = plot(items, args.workspace / "status_map.png")
    if figure:
        print(f"plot: {figure}")
    return {"workspace": str(args.workspace), "iterations": items,
            "plot": str(figure) if figure else None}


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Run the whole flywheel on synthetic recordings: record, dedup, active learning, flush,
    import, prepare, train, export INT8, repeat; print the iteration table."""
    from cv_autolabel.tools.demo import run_demo  # noqa: PLC0415
    from cv_autolabel.tools.flywheel import Teacher  # noqa: PLC0415

    return run_demo(args.workspace, frames=args.frames, seed=args.seed, width=args.width,
                    height=args.height, epochs=args.epochs, imgsz=args.imgsz,
                    rounds=args.iterations, teacher=Teacher(args.teacher, args.teacher_weights))


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Return the ``cv-autolabel`` argument parser with every subcommand."""
    from cv_autolabel.tools.sim.assets import CATALOGUE, DEFAULT_CLASSES, DEFAULT_DISTRACTORS  # noqa: PLC0415

    parser = _Parser(
        prog="cv-autolabel",
        description="The workstation side of cv_autolabel's labelling loop: inspect and "
                    "extract ROS 2 bags, pre-annotate, import CVAT corrections, prepare, "
                    "train, export and publish models, and run the demo.",
        epilog="The loop: flush (on the robot) or preannotate -> CVAT -> import-cvat -> "
               "prepare -> train -> export --publish -> status. 'cv-autolabel COMMAND -h' "
               "explains each command.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("sim", help="render a synthetic RGB-D bin-picking world into a ROS 2 bag",
                       description=cmd_sim.__doc__)
    p.add_argument("out", type=Path, metavar="OUT_BAG", help="bag directory to create")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0, help="same seed, same bag")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES),
                   help=f"target classes, comma separated, from {sorted(CATALOGUE)}")
    p.add_argument("--distractors", default=",".join(DEFAULT_DISTRACTORS),
                   help="distractor classes, comma separated ('' for none)")
    p.add_argument("--per-class", type=int, default=4, help="objects of each class per pile")
    p.add_argument("--n-distractors", type=int, default=3, help="distractors per pile")
    p.add_argument("--scenes", type=int, default=None,
                   help="fresh piles over the recording (default: one per 150 frames)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_BAG if it exists")
    _common(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("extract", help="write a bag's RGB-D frames as images + index",
                       description=cmd_extract.__doc__)
    p.add_argument("bag", type=Path, metavar="BAG")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="colour image format")
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    p.add_argument("--overwrite", action="store_true", help="replace files in a non-empty --out")
    _add_topics(p)
    _common(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("info", help="list a bag's topics, types and counts",
                       description=cmd_info.__doc__)
    p.add_argument("bag", type=Path, metavar="BAG")
    _common(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("dedup", help="keep only the novel frames of a bag or image folder",
                       description=cmd_dedup.__doc__)
    p.add_argument("src", type=Path, metavar="SRC", help="ROS 2 bag directory or image folder")
    p.add_argument("--db", required=True,
                   help="vector store: Milvus Lite file (created if missing) or server URI")
    p.add_argument("--out", type=Path, required=True, help="directory of the kept frames")
    p.add_argument("--threshold", type=float, default=None,
                   help="cosine similarity at or above which a frame is a duplicate (0.95)")
    p.add_argument("--embedder", choices=["auto", "resnet50", "thumbnail"], default=None,
                   help="auto: ResNet50 when its weights are found, else thumbnail")
    p.add_argument("--weights", default=None, help="ResNet50 .pth file or 'imagenet'")
    p.add_argument("--precision", choices=["int8", "fp32"], default=None)
    _add_topics(p)
    _common(p)
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("replay", help="run the detector (or --active-learning: dedup and "
                       "the queue) over a bag",
                       description=cmd_replay.__doc__)
    p.add_argument("bag", type=Path, metavar="BAG")
    p.add_argument("--out", type=Path, default=None, metavar="OUT_BAG", help="bag to create")
    p.add_argument("--model", type=Path, default=None,
                   help="OpenVINO segmentation export directory (ultralytics format); with "
                        "--active-learning the student")
    p.add_argument("--active-learning", action="store_true",
                   help="run dedup -> active learning and queue disagreements in --queue")
    p.add_argument("--queue", type=Path, default=None, help="annotation queue directory")
    p.add_argument("--teacher", choices=["groundtruth", "sam3"], default="groundtruth")
    p.add_argument("--teacher-weights", type=Path, default=None, help="sam3.pt")
    p.add_argument("--workspace", type=Path, default=Path("autolabel_workspace"),
                   help="where `status` finds iterations (the replay's disagreement rate)")
    p.add_argument("--segmenter", choices=["yolo", "gt"], default="yolo",
                   help="yolo: --model; gt: the synthetic bag's ground-truth masks")
    p.add_argument("--namespace", default="/" + NAMESPACE,
                   help="prefix of the output topics (default: the live detector's, "
                        "/cv_autolabel, so one RViz set-up serves both)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--no-debug-image", action="store_true", help="skip the overlay image")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_BAG if it exists")
    _add_topics(p)
    _common(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("flush", help="export the annotation queue as a CVAT COCO 1.0 zip",
                       description=cmd_flush.__doc__)
    p.add_argument("--queue", type=Path, required=True, help="annotation queue directory")
    p.add_argument("--out", type=Path, required=True, metavar="ZIP", help="zip to write")
    p.add_argument("--classes", default=None,
                   help="category order, comma separated (default: config, else the queue's)")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="export at most N frames, the highest labelling priority first")
    p.add_argument("--diverse", action="store_true",
                   help="with --limit: the highest-priority frame of each of N clusters of "
                        "similar-looking frames, not the N highest priorities (which are often "
                        "one situation filmed many times)")
    p.add_argument("--review", type=Path, default=None, metavar="DIR",
                   help="also write side-by-side student/teacher review images here")
    _common(p)
    p.set_defaults(func=cmd_flush)

    p = sub.add_parser("preannotate", help="teacher pre-annotations of a frame pool as a "
                       "CVAT COCO 1.0 zip (resumable, shardable)",
                       description=cmd_preannotate.__doc__)
    p.add_argument("src", type=Path, nargs="?", default=None, metavar="SRC",
                   help="image folder (recursive) or ROS 2 bag")
    p.add_argument("--out", type=Path, required=True, metavar="COCO_ZIP", help="zip to write")
    p.add_argument("--teacher", choices=["sam3", "groundtruth"], default="sam3")
    p.add_argument("--teacher-weights", type=Path, default=None,
                   help="sam3.pt (default: config, else ~/cv_autolabel_data/models/sam3.pt)")
    p.add_argument("--work", type=Path, default=None,
                   help="work directory of the resumable queue (default: <COCO_ZIP>.work)")
    p.add_argument("--shard", default="1/1", metavar="i/n",
                   help="process frames with index %% n == i-1 (1-based i)")
    p.add_argument("--merge-iou", type=float, default=0.6,
                   help="merge same-class teacher instances overlapping by more IoU")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="ZIP",
                   help="instead: merge these (shard) zips into --out")
    _add_topics(p)
    _common(p)
    p.set_defaults(func=cmd_preannotate)

    p = sub.add_parser("import-cvat", help="add a CVAT COCO 1.0 export as a dataset version",
                       description=cmd_import_cvat.__doc__)
    p.add_argument("zip", type=Path, metavar="ZIP")
    p.add_argument("--into", type=Path, required=True, metavar="DATASET",
                   help="dataset root (versions v0001, v0002, ... are created inside)")
    p.add_argument("--no-merge", action="store_true",
                   help="only add the batch as a version; do not merge it with the newest "
                        "one")
    _common(p)
    p.set_defaults(func=cmd_import_cvat)

    p = sub.add_parser("prepare", help="train/val/test split, YOLO-seg labels and data.yaml",
                       description=cmd_prepare.__doc__)
    p.add_argument("dataset", type=Path, metavar="DATASET",
                   help="a dataset version directory, or a root (its newest version is used)")
    p.add_argument("--out", type=Path, required=True, help="output directory (new or empty)")
    p.add_argument("--split", default="0.7,0.15,0.15", help="train,val,test fractions")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a YOLO segmentation model on a data.yaml",
                       description=cmd_train.__doc__)
    p.add_argument("data_yaml", type=Path, metavar="DATA_YAML", help="written by 'prepare'")
    p.add_argument("--model", default="yolo11n-seg.yaml",
                   help="segmentation config (yolo11n-seg.yaml, yolo26s-seg.yaml, ...) or a "
                        "local .pt to fine-tune")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patience", type=int, default=20, help="early-stopping patience (epochs)")
    p.add_argument("--device", default="cpu", help="cpu, 0, cuda:0, ...")
    p.add_argument("--out", type=Path, default=Path("autolabel_workspace/runs"),
                   help="runs directory (default: ./autolabel_workspace/runs)")
    p.add_argument("--name", default=None,
                   help="run name (default: <dataset version>_<model>_<time>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracking", choices=["auto", "clearml", "none"], default="auto",
                   help="auto: ClearML when configured (or offline with "
                        "CV_AUTOLABEL_CLEARML_OFFLINE=1), else none")
    p.add_argument("--dataset-version", default=None,
                   help="dataset version to record (default: inferred, else none)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="OpenVINO FP32 + verified INT8 export of a trained model",
                       description=cmd_export.__doc__)
    p.add_argument("model", type=Path, metavar="MODEL", help="ultralytics .pt weights")
    p.add_argument("--data", type=Path, required=True, metavar="DATA_YAML",
                   help="data.yaml whose train split calibrates INT8 and val split verifies it")
    p.add_argument("--out", type=Path, default=None,
                   help="new output directory (default: MODEL's parent/../export_<time>)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="largest allowed INT8 mask mAP50-95 drop, in points (default 1.0)")
    p.add_argument("--samples", type=int, default=8,
                   help="val images of the FP32/INT8 output agreement check")
    p.add_argument("--fraction", type=float, default=1.0,
                   help="fraction of train images used for INT8 calibration")
    p.add_argument("--publish", type=Path, default=None, metavar="LINK",
                   help="symlink to point at the INT8 model on success (e.g. models/current)")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("publish", help="point the detector's model symlink at a verified "
                       "exported model", description=cmd_publish.__doc__)
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="an exported model directory with its manifest.json (export's int8/)")
    p.add_argument("--link", type=Path, default=None,
                   help="the detector's model_path symlink (default: detector_node's "
                        "model_path in --config, else ~/cv_autolabel_data/models/current)")
    _common(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("status", help="table and plot of the flywheel's iterations",
                       description=cmd_status.__doc__)
    p.add_argument("--workspace", type=Path, default=Path("autolabel_workspace"),
                   help="workspace of train/replay/demo (default: ./autolabel_workspace)")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("demo", help="run the pipeline end to end on a synthetic recording",
                       description=cmd_demo.__doc__)
    p.add_argument("--workspace", type=Path, default=Path("autolabel_workspace"),
                   help="where the demo writes (default: ./autolabel_workspace, as status)")
    p.add_argument("--frames", type=int, default=300, help="frames per recording")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--epochs", type=int, default=40, help="training epochs per iteration")
    p.add_argument("--imgsz", type=int, default=320, help="training and export image size")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", choices=["groundtruth", "sam3"], default="groundtruth",
                   help="who labels: the synthetic truth, or SAM3 (needs its weights; seconds "
                        "per frame on a CPU)")
    p.add_argument("--teacher-weights", type=Path, default=None,
                   help="sam3.pt (default: $CV_AUTOLABEL_SAM3, else "
                        "~/cv_autolabel_data/models/sam3.pt)")
    _common(p)
    p.set_defaults(func=cmd_demo)
    return parser


class _LevelPrefix(logging.Formatter):
    """Format library log records like the CLI's own lines: ``warning: …``."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix())
    root = logging.getLogger("cv_autolabel")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cv-autolabel``; return the process exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging()
    func: Callable[[argparse.Namespace], dict[str, Any]] = args.func
    try:
        summary = func(args)
    except CvAutolabelError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_ERROR
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        sys.stderr.write(f"error:{where} {err.strerror or err}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_INTERRUPTED
    if args.json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
