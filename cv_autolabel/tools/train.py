"""Train a YOLO segmentation student on a prepared dataset, offline, and record the run.

``train`` takes the ``data.yaml`` that :mod:`cv_autolabel.tools.prepare` writes and runs
ultralytics training on it, from a model config (``yolo11n-seg.yaml``: fresh weights) or from a
local ``.pt`` (fine-tuning a previous iteration's ``best.pt``). Nothing is downloaded: a ``.pt``
that does not exist locally is an error, plots are off (they would fetch a font), AMP is off
(its check would fetch ``yolo11n.pt``), and ultralytics' font check of the dataset is skipped
(it would fetch ``Arial.ttf``). The run lands in ``out/<name>/`` (ultralytics'
``weights/best.pt``, ``weights/last.pt``, ``results.csv``) plus ``cv_autolabel_run.json``:
data, dataset version, model, settings, final val metrics (box and mask mAP50, mAP50-95, and
mask mAP50-95 per class), weights, duration and tracking.

Tracking (``tracking=``):

- ``none``: ClearML is neither imported nor initialised; ultralytics' own integrations
  (ClearML, Comet, MLflow, …) and its analytics are switched off for the run.
- ``clearml``: a ClearML task in project ``cv_autolabel`` gets the parameters, the dataset
  version, per-epoch losses and metrics and the final metrics. Online when ClearML is configured
  (``~/clearml.conf``, ``CLEARML_CONFIG_FILE`` or ``CLEARML_API_HOST``), else offline: the
  session is zipped locally (``tracking.offline_zip``) for ``clearml-task --import-offline-session``.
- ``auto``: ``clearml`` when ClearML is configured or ``CV_AUTOLABEL_CLEARML_OFFLINE=1`` (then
  offline), else ``none``.

ultralytics' own ClearML callback is always disabled (in memory, for the duration of the run;
the settings file is not rewritten): this module does the logging, so a run without tracking
never touches ClearML and a run with it is logged once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cv_autolabel.errors import TrainingError
from cv_autolabel.tools.ultralytics_output import stdout_to_stderr

RUN_FILE = "cv_autolabel_run.json"
TRACKING_MODES = ("auto", "clearml", "none")
CLEARML_PROJECT = "cv_autolabel"
OFFLINE_ENV = "CV_AUTOLABEL_CLEARML_OFFLINE"
#: ultralytics settings switched off during a run: its integrations and its analytics.
_INTEGRATIONS = ("clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "sync")
_RESERVED = ("data", "project", "name", "exist_ok")
_METRIC_KEYS = {"box_map50": "metrics/mAP50(B)", "box_map50_95": "metrics/mAP50-95(B)",
                "mask_map50": "metrics/mAP50(M)", "mask_map50_95": "metrics/mAP50-95(M)",
                "box_precision": "metrics/precision(B)", "box_recall": "metrics/recall(B)",
                "mask_precision": "metrics/precision(M)", "mask_recall": "metrics/recall(M)"}


def train(data_yaml: Path, *, model: str = "yolo11n-seg.yaml", epochs: int = 50,
          imgsz: int = 640, batch: int = 8, out: Path = Path("autolabel_workspace/runs"),
          name: str | None = None, seed: int = 0, tracking: str = "auto", patience: int = 20,
          device: str = "cpu", dataset_version: str | None = None,
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a segmentation model on ``data_yaml`` and record the run.

    Args:
        data_yaml: a YOLO segmentation data.yaml (``prepare`` writes one).
        model: a segmentation config name or file (``yolo11n-seg.yaml``, ``yolo26s-seg.yaml``)
            or a local ``.pt`` to fine-tune.
        epochs: training epochs.
        imgsz: training image size (pixels, square).
        batch: batch size.
        out: the runs directory (ultralytics' ``project``).
        name: the run name; default ``<dataset version>_<model stem>_<YYYYmmdd-HHMMSS>``.
            An existing ``out/name`` is an error, never silently renamed.
        seed: training seed (deterministic mode is on).
        tracking: ``auto``, ``clearml`` or ``none`` (see the module docstring).
        patience: early-stopping patience in epochs.
        device: torch device for ultralytics (``cpu``, ``0``, ``cuda:0``).
        dataset_version: recorded version; default from data.yaml's ``dataset_version`` key
            (``prepare`` writes it), else None.
        extra: further ultralytics train arguments (they win over the ones above, except
            ``data``, ``project``, ``name`` and ``exist_ok``).

    Returns:
        The run record also written to ``<run>/cv_autolabel_run.json``: ``run_dir``,
        ``data_yaml``, ``dataset_version``, ``model``, ``settings``, ``metrics`` (box/mask
        mAP50 and mAP50-95, precision, recall of the final validation), ``epochs_completed``,
        ``best_weights``, ``last_weights``, ``duration_s``, ``tracking``, ``run_file``.

    Raises:
        TrainingError: bad data.yaml, model, name, tracking or extra, or a failed training.
    """
    started = time.monotonic()
    data_yaml = Path(data_yaml).expanduser().resolve()
    data = check_data_yaml(data_yaml)
    version = dataset_version or infer_dataset_version(data_yaml, data)
    mode = resolve_tracking(tracking)
    kwargs = _train_kwargs(epochs=epochs, imgsz=imgsz, batch=batch, seed=seed,
                           patience=patience, device=device, extra=extra)
    yolo = load_model(model)
    out = Path(out).expanduser().resolve()
    name = name or default_run_name(version or data_yaml.parent.name, model)
    if (out / name).exists():
        raise TrainingError(f"run directory {out / name} already exists; choose another --name")
    with _Tracker(mode, name) as tracker:
        tracker.connect(version, data_yaml, model, kwargs)
        yolo.add_callback("on_fit_epoch_end", tracker.on_fit_epoch_end)
        results = _fit(yolo, data_yaml, out, name, kwargs)
        record = _record(yolo, results, data_yaml=data_yaml, version=version, model=model,
                         settings=kwargs)
        tracker.final(record)
    record.update(duration_s=round(time.monotonic() - started, 2), tracking=tracker.info())
    return _write_record(record)


# --- inputs ----------------------------------------------------------------------------------

def check_data_yaml(data_yaml: Path) -> dict[str, Any]:
    """Return the parsed data.yaml after checking its train and val images exist.

    Paths resolve as ultralytics resolves them: against ``path`` when absolute, else against
    ultralytics' ``datasets_dir``; without ``path``, against the yaml's directory.

    Raises:
        TrainingError: a missing or unreadable file, no ``names``, or missing train/val images.
    """
    if not data_yaml.is_file():
        raise TrainingError(f"data.yaml not found: {data_yaml}")
    try:
        data = yaml.safe_load(data_yaml.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise TrainingError(f"cannot read {data_yaml}: {err}") from err
    if not isinstance(data, dict) or not data.get("names"):
        raise TrainingError(f"{data_yaml} is not a YOLO data.yaml (no 'names')")
    root = _data_root(data_yaml, data.get("path"))
    for split in ("train", "val"):
        entries = data.get(split)
        if not entries:
            raise TrainingError(f"{data_yaml} has no '{split}' images")
        for entry in entries if isinstance(entries, list) else [entries]:
            if not (root / str(entry)).exists():
                raise TrainingError(f"{data_yaml}: {split} images {root / str(entry)} not found")
    return data


def _data_root(data_yaml: Path, path: Any) -> Path:
    if not path:
        return data_yaml.parent
    if Path(str(path)).is_absolute():
        return Path(str(path))
    from ultralytics.utils import DATASETS_DIR  # noqa: PLC0415

    return (Path(DATASETS_DIR) / str(path)).resolve()


def infer_dataset_version(data_yaml: Path, data: dict[str, Any]) -> str | None:
    """Return the ``dataset_version`` key of a data.yaml (``prepare`` writes it), or None."""
    return str(data["dataset_version"]) if data.get("dataset_version") else None


def load_model(model: str) -> Any:
    """Return an ultralytics ``YOLO`` segmentation model from a config or a local ``.pt``.

    Raises:
        TrainingError: a ``.pt`` that does not exist (never downloaded), an unknown config,
            another suffix, or a model that is not a segmentation model.
    """
    suffix = Path(model).suffix.lower()
    if suffix == ".pt" and not Path(model).expanduser().is_file():
        raise TrainingError(f"weights {model} not found (only local .pt files are used)")
    if suffix not in (".pt", ".yaml", ".yml"):
        raise TrainingError(f"model must be a segmentation config (.yaml) or a local .pt, "
                            f"got {model!r}")
    from ultralytics import YOLO  # noqa: PLC0415

    source = str(Path(model).expanduser()) if suffix == ".pt" else model
    try:
        yolo = YOLO(source)
    except Exception as err:  # ultralytics raises FileNotFoundError, KeyError, RuntimeError, ...
        raise TrainingError(f"cannot load model {model!r}: {err}") from err
    if yolo.task != "segment":
        raise TrainingError(f"{model!r} is a {yolo.task} model, not a segmentation model "
                            "(use e.g. yolo11n-seg.yaml)")
    return yolo


def resolve_tracking(tracking: str) -> str:
    """Return ``none``, ``clearml`` (online) or ``clearml-offline`` for a tracking setting.

    Raises:
        TrainingError: an unknown setting.
    """
    if tracking not in TRACKING_MODES:
        raise TrainingError(f"tracking must be one of {TRACKING_MODES}, got {tracking!r}")
    if tracking == "none":
        return "none"
    if clearml_configured():
        return "clearml"
    if tracking == "clearml" or os.environ.get(OFFLINE_ENV) == "1":
        return "clearml-offline"
    return "none"


def clearml_configured() -> bool:
    """Return whether a ClearML server is configured (config file or API host variable)."""
    config = os.environ.get("CLEARML_CONFIG_FILE")
    return bool(os.environ.get("CLEARML_API_HOST")
                or (config and Path(config).expanduser().is_file())
                or Path("~/clearml.conf").expanduser().is_file())


def default_run_name(version: str, model: str) -> str:
    """Return ``<version>_<model stem>_<local time>``.

    Example:
        >>> default_run_name("v0002", "runs/a/weights/best.pt").startswith("v0002_best_")
        True
    """
    return f"{version}_{Path(model).stem}_{datetime.now():%Y%m%d-%H%M%S}"


def _train_kwargs(*, epochs: int, imgsz: int, batch: int, seed: int, patience: int,
                  device: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    if epochs < 1 or imgsz < 32 or batch < 1:
        raise TrainingError(f"need epochs >= 1, imgsz >= 32, batch >= 1; got {epochs}, "
                            f"{imgsz}, {batch}")
    reserved = sorted(set(extra or {}) & set(_RESERVED))
    if reserved:
        raise TrainingError(f"extra may not set {reserved}; use the train arguments")
    return {"epochs": epochs, "imgsz": imgsz, "batch": batch, "seed": seed,
            "deterministic": True, "patience": patience, "device": device, "workers": 0,
            "plots": False, "amp": False, "val": True, **(extra or {})}


# --- training --------------------------------------------------------------------------------

def _fit(yolo: Any, data_yaml: Path, out: Path, name: str, kwargs: dict[str, Any]) -> Any:
    """Run ultralytics training with its integrations off and its output on stderr."""
    with _integrations_off(), _no_font_download(), stdout_to_stderr():
        try:
            return yolo.train(data=str(data_yaml), project=str(out), name=name, exist_ok=False,
                              **kwargs)
        except Exception as err:  # ultralytics raises anything from data, torch or cuda
            raise TrainingError(f"training failed: {type(err).__name__}: {err}") from err


@contextlib.contextmanager
def _integrations_off() -> Iterator[None]:
    """Switch ultralytics' integration callbacks and analytics off, in memory only."""
    from ultralytics.utils import SETTINGS  # noqa: PLC0415

    saved = {k: SETTINGS[k] for k in _INTEGRATIONS if k in SETTINGS}
    # dict.update: SettingsManager.update would rewrite the user's settings file
    dict.update(SETTINGS, dict.fromkeys(saved, False))
    try:
        yield
    finally:
        dict.update(SETTINGS, saved)


@contextlib.contextmanager
def _no_font_download() -> Iterator[None]:
    """Keep ``check_det_dataset`` from fetching Arial.ttf: plots are off, no font is needed.

    ultralytics checks the font on every dataset check and, when it is not installed, asks
    GitHub for it (a 3 s timeout offline, a download online).
    """
    import ultralytics.data.utils as data_utils  # noqa: PLC0415

    original = data_utils.check_font
    data_utils.check_font = lambda *args, **kwargs: None
    try:
        yield
    finally:
        data_utils.check_font = original


def _record(yolo: Any, results: Any, *, data_yaml: Path, version: str | None, model: str,
            settings: dict[str, Any]) -> dict[str, Any]:
    """Return the run record (without duration and tracking) from the finished trainer."""
    trainer = yolo.trainer
    values = getattr(results, "results_dict", None) or dict(trainer.metrics or {})
    metrics = {k: round(float(values[src]), 5) for k, src in _METRIC_KEYS.items()
               if src in values}
    best, last = Path(trainer.best), Path(trainer.last)
    return {"run_dir": str(trainer.save_dir), "data_yaml": str(data_yaml),
            "dataset_version": version, "model": model, "settings": settings,
            "metrics": metrics, "mask_map50_95_per_class": mask_map_per_class(results),
            "epochs_completed": int(trainer.epoch) + 1,
            "best_weights": str(best) if best.is_file() else None,
            "last_weights": str(last) if last.is_file() else None}


def mask_map_per_class(results: Any) -> dict[str, float]:
    """Mask mAP50-95 of each class present in the validation set, by class name.

    ``results`` is ultralytics' ``SegmentMetrics``; anything else gives ``{}``. Classes absent
    from the validation set are left out (ultralytics fills them with the overall mean).
    """
    seg, names = getattr(results, "seg", None), getattr(results, "names", None) or {}
    try:
        return {str(names.get(int(c), c)): round(float(ap), 5)
                for c, ap in zip(seg.ap_class_index, seg.ap)}
    except (AttributeError, TypeError):
        return {}


def _write_record(record: dict[str, Any]) -> dict[str, Any]:
    path = Path(record["run_dir"]) / RUN_FILE
    record["run_file"] = str(path)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


# --- tracking --------------------------------------------------------------------------------

class _Tracker:
    """A ClearML task for one run, or nothing at all when ``mode`` is ``none``."""

    def __init__(self, mode: str, name: str) -> None:
        self.mode = mode
        self.name = name
        self.task: Any = None
        self._info: dict[str, Any] = {"mode": mode}

    def __enter__(self) -> _Tracker:
        if self.mode != "none":
            self.task = _init_task(self.name, offline=self.mode == "clearml-offline")
            self._info["task_id"] = str(self.task.id)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.task is None:
            return
        folder = self.task.get_offline_mode_folder() if self.mode == "clearml-offline" else None
        if exc is not None:
            self.task.mark_failed(status_message=str(exc)[:200])
        # offline mode is process-wide and stays on: going back online needs a configured
        # server, and a later clearml-tracked run then stays offline too
        self.task.close()
        if folder is not None:
            self._info["offline_zip"] = f"{folder}.zip"
            self._info["offline_zip_exists"] = Path(f"{folder}.zip").is_file()

    def info(self) -> dict[str, Any]:
        """Return what was tracked: ``mode``, ``task_id``, ``offline_zip`` when offline."""
        return dict(self._info)

    def connect(self, version: str | None, data_yaml: Path, model: str,
                settings: dict[str, Any]) -> None:
        """Log the dataset version and the training parameters."""
        if self.task is None:
            return
        self.task.connect({"dataset_version": version or "", "data_yaml": str(data_yaml),
                           "model": model}, name="dataset")
        self.task.connect(dict(settings), name="train")
        if version:
            self.task.add_tags([f"dataset:{version}"])

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """Report the epoch's training losses and validation metrics (ultralytics callback)."""
        if self.task is None:
            return
        logger = self.task.get_logger()
        losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        for key, value in {**losses, **(trainer.metrics or {})}.items():
            title, _, series = key.partition("/")
            logger.report_scalar(title, series or title, float(value), iteration=trainer.epoch)

    def final(self, record: dict[str, Any]) -> None:
        """Report the final metrics and where the weights are."""
        if self.task is None:
            return
        logger = self.task.get_logger()
        for key, value in record["metrics"].items():
            logger.report_single_value(key, value)
        for name, value in record["mask_map50_95_per_class"].items():
            logger.report_single_value(f"mask_map50_95/{name}", value)
        self.task.connect({"best_weights": record["best_weights"] or "",
                           "run_dir": record["run_dir"]}, name="result")


def _init_task(name: str, *, offline: bool) -> Any:
    """Start the ClearML task (offline: nothing leaves the machine)."""
    try:
        from clearml import Task  # noqa: PLC0415
    except ImportError as err:
        raise TrainingError(f"ClearML tracking needs the clearml package: {err}") from err
    if offline:
        Task.set_offline(offline_mode=True)
    frameworks = dict.fromkeys(("matplotlib", "tensorflow", "tensorboard", "pytorch", "xgboost",
                                "scikit", "fastai", "lightgbm", "hydra", "tfdefines", "joblib",
                                "megengine", "catboost", "gradio", "jsonargparse"), False)
    frameworks["detect_repository"] = not offline
    try:
        return Task.init(project_name=CLEARML_PROJECT, task_name=name,
                         auto_connect_frameworks=frameworks, auto_connect_arg_parser=False,
                         auto_resource_monitoring=not offline, reuse_last_task_id=False)
    except Exception as err:  # server unreachable, bad credentials, ...
        raise TrainingError(f"cannot start the ClearML task: {err}") from err
