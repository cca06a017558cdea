"""anomalib's model integration suite (``tests/integration/model/test_models.py``), run on our four models.

Upstream anomalib runs, for every model it lists, default-constructed (``get_model(name)``, no
arguments) with ``Engine(logger=False, default_root_dir=project, max_epochs=1, devices=1,
max_steps=-1)`` on an MVTec-layout category with ``train_batch_size=2``: ``fit``; then ``test``,
``train``, ``validate`` and ``predict`` from ``{project}/{model.name}/{datamodule.name}/<category>/
v0/weights/lightning/model.ckpt``; then ``export`` to every ``ExportType`` from that checkpoint.
Passing it is a requirement for upstreaming, so the same sequence runs here in CI.

Differences, none of which changes the sequence:

* data: 4 train and 4 test images (1 good, 1 per defect, with masks) of the ``brick`` category
  of the ``texture_root`` fixture (64 px files), read by anomalib's own ``MVTecAD`` data module,
  instead of upstream's generated ``dummy`` category (256 px, 5 train / 10 test); fewer images
  because every step re-reads the test split; ``num_workers=0``; one torch thread;
* weights: random-init state dicts of the default backbones (and a random EfficientAD teacher)
  written to a temporary ``$ANOMALIB_EXT_WEIGHTS_DIR``, where the offline loaders look; the
  suite checks plumbing, not accuracy;
* each model is fitted once per module (a module-scoped fixture) and the other seven steps reuse
  its checkpoint, as upstream's steps do through the shared project folder;
* assertions on what each step returns or writes (upstream only checks nothing raises).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import timm
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from anomalib.models import get_model

# Imported (not only `import anomalib_ext`, which loads models lazily) so that the classes exist as
# AnomalibModule subclasses, which is where anomalib's get_model(name) looks for them.
from anomalib_ext import RD4AD, RSTPM, EfficientADOffline, UniAD
from anomalib_ext.components.backbone import WEIGHTS_DIR_ENV, split_timm_name
from anomalib_ext.models.efficientad.torch_model import make_pdn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anomalib.models.components import AnomalibModule

pytestmark = pytest.mark.slow

CATEGORY = "brick"
# get_model name (what anomalib's list_models() reports for our classes) -> the class it must give
# and the timm backbones its defaults load (random-init files stand in for the ImageNet weights).
MODELS: dict[str, tuple[type[AnomalibModule], tuple[str, ...]]] = {
    "r_d4_a_d": (RD4AD, ("wide_resnet50_2",)),
    "r_s_t_p_m": (RSTPM, ("resnet18", "resnet50")),
    "uni_a_d": (UniAD, ("tf_efficientnet_b4",)),
    "efficient_a_d_offline": (EfficientADOffline, ()),  # its teacher is a PDN file, written once below
}
# Images of texture_root's brick category the suite runs on: a subset keeps the 32 steps CPU-sized
# (every step re-reads the test split; the models resize to their default input size anyway).
SUBSET = {"train/good": 4, "test/*": 1}  # test/*: good and each defect
EXPORT_FILES = {ExportType.TORCH: "model.pt", ExportType.ONNX: "model.onnx", ExportType.OPENVINO: "model.xml"}


@dataclass(frozen=True)
class Fitted:
    """One model fitted by the suite's first step: its name, project folder and checkpoint."""

    model_name: str
    project: Path
    dataset_root: Path
    checkpoint: Path


def objects(model_name: str, dataset_root: Path, project: Path) -> tuple[AnomalibModule, MVTecAD, Engine]:
    """Upstream's ``TestAPI._get_objects``: a default model, the MVTec data module, the suite's engine."""
    datamodule = MVTecAD(root=dataset_root, category=CATEGORY, train_batch_size=2, num_workers=0)
    model = get_model(model_name)
    engine = Engine(logger=False, default_root_dir=project, max_epochs=1, devices=1, max_steps=-1)
    return model, datamodule, engine


def checkpoint_path(project: Path, model: AnomalibModule, datamodule: MVTecAD) -> Path:
    """Where upstream's steps read the checkpoint that ``fit`` wrote."""
    return project / model.name / datamodule.name / CATEGORY / "v0" / "weights" / "lightning" / "model.ckpt"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread: on small shared CI machines two threads mostly spin-wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset_root(texture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout copy of part of ``texture_root/brick`` (``SUBSET``): 4 train, 4 test images with masks."""
    source, root = texture_root / CATEGORY, tmp_path_factory.mktemp("suite_data")
    for pattern, count in SUBSET.items():
        for folder in sorted(path for path in source.glob(pattern) if path.is_dir()):
            split_dir = folder.relative_to(source)
            for image in sorted(folder.glob("*.png"))[:count]:
                copies = [(image, split_dir / image.name)]
                if split_dir.parts[0] == "test" and split_dir.name != "good":
                    mask = source / "ground_truth" / split_dir.name / f"{image.stem}_mask.png"
                    copies.append((mask, Path("ground_truth", split_dir.name, mask.name)))
                for src, relative in copies:
                    (root / CATEGORY / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, root / CATEGORY / relative)
    return root


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary ``$ANOMALIB_EXT_WEIGHTS_DIR`` (filled per model) for this module's tests."""
    folder = tmp_path_factory.mktemp("weights")
    torch.save(make_pdn("small", 384, padding=False).state_dict(), folder / "efficientad_teacher_small.pth")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WEIGHTS_DIR_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(
    request: pytest.FixtureRequest,
    weights_dir: Path,
    dataset_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fitted]:
    """Step 1 of the suite (``test_fit``): fit the default model once; the other steps reuse its checkpoint."""
    model_name: str = request.param
    model_cls, backbones = MODELS[model_name]
    for arch in backbones:
        path = weights_dir / f"{arch}.pth"  # the untagged name matches every pretrained tag
        torch.save(timm.create_model(split_timm_name(arch)[0], pretrained=False).state_dict(), path)
    project = tmp_path_factory.mktemp(model_name)
    model, datamodule, engine = objects(model_name, dataset_root, project)
    assert type(model) is model_cls
    engine.fit(model=model, datamodule=datamodule)
    yield Fitted(model_name, project, dataset_root, checkpoint_path(project, model, datamodule))
    for arch in backbones:  # the backbone files are large (WideResNet-50: 270 MB)
        (weights_dir / f"{arch}.pth").unlink()


def test_fit(fitted: Fitted) -> None:
    """``fit`` wrote the checkpoint at the path the other steps read, from a finished epoch."""
    assert fitted.checkpoint.is_file(), sorted(str(p) for p in fitted.project.rglob("*.ckpt"))
    checkpoint = torch.load(fitted.checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 0
    assert checkpoint["global_step"] > 0


def test_test(fitted: Fitted) -> None:
    """``test`` from the checkpoint reports every metric of the model's default evaluator, AUROCs in [0, 1]."""
    model, datamodule, engine = objects(fitted.model_name, fitted.dataset_root, fitted.project)
    results = engine.test(model=model, datamodule=datamodule, ckpt_path=fitted.checkpoint)
    assert model.evaluator is not None
    expected = {metric.name for metric in model.evaluator.test_metrics}
    assert {"image_AUROC", "pixel_AUROC"} <= expected <= results[0].keys()
    assert all(0.0 <= float(value) <= 1.0 for name, value in results[0].items() if "AUROC" in name or "AUPRO" in name)


def test_train(fitted: Fitted) -> None:
    """``train`` (fit + test) resumed from the checkpoint."""
    model, datamodule, engine = objects(fitted.model_name, fitted.dataset_root, fitted.project)
    engine.train(model=model, datamodule=datamodule, ckpt_path=fitted.checkpoint)
    assert engine.trainer.state.finished


def test_validate(fitted: Fitted) -> None:
    """``validate`` from the checkpoint."""
    model, datamodule, engine = objects(fitted.model_name, fitted.dataset_root, fitted.project)
    engine.validate(model=model, datamodule=datamodule, ckpt_path=fitted.checkpoint)
    assert engine.trainer.state.finished


def test_predict(fitted: Fitted) -> None:
    """``predict`` from the checkpoint gives a map and a score for every test image."""
    model, datamodule, engine = objects(fitted.model_name, fitted.dataset_root, fitted.project)
    predictions = engine.predict(model=model, ckpt_path=fitted.checkpoint, datamodule=datamodule)
    assert predictions
    assert sum(len(batch.pred_score) for batch in predictions) == len(
        list((fitted.dataset_root / CATEGORY / "test").rglob("*.png")),
    )
    assert all(batch.anomaly_map is not None for batch in predictions)


@pytest.mark.parametrize("export_type", list(ExportType), ids=lambda export_type: export_type.value)
def test_export(fitted: Fitted, export_type: ExportType) -> None:
    """``export`` from the checkpoint to each format anomalib offers writes its model file."""
    model, _, engine = objects(fitted.model_name, fitted.dataset_root, fitted.project)
    path = engine.export(model=model, ckpt_path=fitted.checkpoint, export_type=export_type)
    assert path is not None
    assert Path(path).name == EXPORT_FILES[export_type]
    assert Path(path).is_file()
