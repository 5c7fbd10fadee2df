"""Fixtures shared by the suite: tiny canonical datasets built in code, in the exact on-disk layout."""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.data.dataset import (
    ClassificationLabel,
    ImageSpec,
    Manifest,
    Modalities,
    RegressionLabel,
    SequenceArray,
    SequenceSpec,
    TextSpec,
    write_dataset,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_dataset(
    root: Path, edit: Callable | None = None, name: str = "tiny", manifest: Manifest | None = None
) -> Path:
    """A valid 12-sample dataset with every modality at `root/name`; `edit(samples, sequences, images)` breaks it."""
    n, steps, dim = 12, 4, 3
    rng = np.random.default_rng(0)
    samples = pd.DataFrame(
        {
            "id": [f"s{i:02d}" for i in range(n)],
            "split": ["train"] * 6 + ["valid"] * 3 + ["test"] * 3,
            "text": [f"sample number {i} was {'good' if i % 2 else 'bad'}" for i in range(n)],
            "label": [(-1.0) ** i * (i % 3) for i in range(n)],
            "image": [f"images/s{i:02d}.png" for i in range(n)],
            "seq_index": pd.array(range(n), dtype="Int64"),
        }
    )
    sequences = {
        m: SequenceArray(rng.normal(size=(n, steps, dim)).astype(np.float32), np.full(n, steps, dtype=np.int64))
        for m in ("audio", "vision")
    }
    images: dict[str, bytes] = {p: png_bytes((10 * i, 100, 50)) for i, p in enumerate(samples["image"])}
    if edit is not None:
        edited = edit(samples, sequences, images)  # mutates in place, or returns a new samples frame
        samples = samples if edited is None else edited
    spec = SequenceSpec(dim=dim, max_len=steps)
    manifest = manifest or Manifest(
        name=name,
        label=RegressionLabel(min=-3, max=3),
        modalities=Modalities(text=TextSpec(), image=ImageSpec(height=8, width=8), audio=spec, vision=spec),
    )
    out = root / name
    write_dataset(out, manifest, samples, sequences, images)
    return out


def two_classes(samples: pd.DataFrame, sequences: dict, images: dict) -> None:
    """A `tiny_dataset` edit: class labels neg/pos instead of scores (use with TWO_CLASS_MANIFEST)."""
    samples["label"] = ["pos" if i % 2 else "neg" for i in range(len(samples))]


TWO_CLASS_MANIFEST = Manifest(
    name="cls",
    label=ClassificationLabel(classes=["neg", "pos"]),
    modalities=Modalities(text=TextSpec(), image=ImageSpec()),
)


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """`tiny_dataset` under this test's tmp_path."""
    return functools.partial(tiny_dataset, tmp_path)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """An MLflow client of a new SQLite store in tmp_path, which is the working directory: MLflow's default artifact
    root ./mlruns lands there too. A module whose store needs more overrides it, taking this one."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


TINY_VOCAB = [
    *["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", "?", ","],
    *["sample", "number", "was", "good", "bad", "the", "film", "end", "it", "i", "loved", "hated"],
    *[str(i) for i in range(12)],
]


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer random BERT with a fast tokenizer, saved as a local model directory (tests never download). Its
    weights are drawn from a fixed seed: every session's tests see the same model, so a test that compares trainings
    (the retrain loop's better model) cannot pass or fail on the draw."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    BertTokenizerFast(vocab={token: i for i, token in enumerate(TINY_VOCAB)}).save_pretrained(out)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    with torch.random.fork_rng():  # the session's global generator is left as it was
        torch.manual_seed(0)
        BertModel(config).save_pretrained(out)
    return out


@pytest.fixture
def guarded_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project as cwd: the repository's params.yaml, a dataset in data/raw, a models/ directory and an mlflow.db,
    which no bad input may change (`tests.hardening.guarded` fingerprints them)."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", root / "params.yaml")
    tiny_dataset(root / "data", name="raw")
    (root / "models" / "trained").mkdir(parents=True)
    (root / "models" / "trained" / "model.json").write_text('{"stands in": "a trained model"}')
    (root / "mlflow.db").write_bytes(b"SQLite format 3\x00 stands in")
    monkeypatch.chdir(root)
    return root


@dataclass(frozen=True)
class Trained:
    raw: Path  # the canonical dataset
    features: Path  # what `featurize` wrote
    model: Path  # what `train` wrote


@pytest.fixture
def trained(make_dataset, tiny_text_model: Path, tmp_path: Path) -> Trained:
    """The tiny dataset, featurized with the tiny BERT and trained for 3 epochs into a small multi-task model."""
    from components.core.config import FeaturizeParams, ModelParams, TrainParams
    from components.features.featurize import featurize
    from components.training.train import train

    raw = make_dataset()
    features = featurize(
        raw, FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), image_size=8), progress=False
    ).out
    model = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})
    settings = TrainParams(out=tmp_path / "models", epochs=3, batch_size=2, patience=10)
    return Trained(raw, features, train(features, model, settings, progress=False).out)


def pytest_configure(config: pytest.Config) -> None:
    """Prefect's database, results and settings live in a temporary home for the session, never ~/.prefect, and
    flows run on the ephemeral API. Set before any test module imports prefect; subprocesses inherit it."""
    home = Path(tempfile.mkdtemp(prefix="msa-prefect-home-"))
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))
    os.environ["PREFECT_HOME"] = str(home)
    # The key registration signs with, and that loaders trust, is made on first use under here: never ~/.config.
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    for name in ("MSA_SIGNING_KEY", "MSA_TRUSTED_KEYS", "MSA_TRUST_MODEL"):
        os.environ.pop(name, None)
    # Several `msa run` of one test may each start an ephemeral server on the new database at the same time.
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    # The tiny models train many times faster on one thread than on two busy cores (measured 12x); set before torch
    # is imported, and inherited by every `msa` and `dvc` subprocess.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "MLFLOW_TRACKING_URI"):
        os.environ.pop(name, None)


SERVE_LIMITS = {
    "max_rows": 8,
    "max_text_chars": 300,
    "max_image_bytes": 4096,
    "max_image_pixels": 4096,
    "max_frames": 16,
}


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> Path:
    """The tiny model trained, packaged with small input bounds (SERVE_LIMITS) and its drift reference, and saved as
    an MLflow pyfunc directory exactly as registration logs it: what `mlflow models serve -m` and `msa predict
    --model` take."""

    from components.core.config import DriftParams, FeaturizeParams, ModelParams, ServeParams, TrainParams
    from components.data.dataset import read_dataset
    from components.features.featurize import featurize
    from components.models.store import read_card
    from components.monitoring.reference import write_reference
    from components.serving.monitored import drift_reference
    from components.serving.package import package_model
    from components.serving.predictor import Predictor
    from components.serving.publish import model_signature
    from components.training.train import train

    root = tmp_path_factory.mktemp("served")
    raw = tiny_dataset(root, name="raw")
    features = featurize(
        raw, FeaturizeParams(out=root / "features", text_model=str(tiny_text_model), image_size=8), progress=False
    ).out
    model = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})
    out = train(features, model, TrainParams(out=root / "models", epochs=2, batch_size=4), progress=False).out
    package = package_model(out, features, root / "package", ServeParams(**SERVE_LIMITS))
    write_reference(package, drift_reference(Predictor(package), read_dataset(raw), DriftParams()))
    return save_signed(package, root / "pyfunc", model_signature(read_card(out).spec))


def save_signed(package: Path, dest: Path, signature: object) -> Path:
    """`package` signed with this session's key and saved as an MLflow pyfunc directory, as registration logs it
    (the loader is the installed `components.serving.pyfunc`; no code travels with the model)."""
    import mlflow

    from components.serving import signing

    signing.sign(package)
    mlflow.pyfunc.save_model(str(dest), loader_module="components.serving", data_path=str(package), signature=signature)
    return dest


CLIP_SERVE_LIMITS = {"max_rows": 8, "max_clip_bytes": 60_000, "max_clip_seconds": 3.0}


@pytest.fixture(scope="session")
def served_clip_model(tmp_path_factory: pytest.TempPathFactory, tiny_text_model: Path) -> tuple[Path, Path]:
    """The media demo (WAV and MP4 clips) trained briefly with the tiny text model and saved as an MLflow pyfunc
    directory as registration logs it; (the pyfunc directory, the dataset)."""

    from components.core.config import FeaturizeParams, ModelParams, ServeParams, TrainParams
    from components.data.demo import generate_demo
    from components.features.contract import read_state
    from components.features.featurize import featurize
    from components.models.store import read_card
    from components.serving.package import package_model
    from components.serving.publish import model_signature
    from components.training.train import train

    root = tmp_path_factory.mktemp("served-clips")
    raw = generate_demo(root / "raw", size=30, seed=3, media=True)
    settings = FeaturizeParams(out=root / "features", text_model=str(tiny_text_model), image_size=8, workers=1)
    features = featurize(raw, settings, progress=False).out
    model = ModelParams(hidden=8, dropout=0.0, textcnn={"feature_maps": 4, "dropout": 0.0})
    out = train(features, model, TrainParams(out=root / "models", epochs=1, batch_size=8), progress=False).out
    package = package_model(out, features, root / "package", ServeParams(**CLIP_SERVE_LIMITS))
    signature = model_signature(read_card(out).spec, read_state(features))
    return save_signed(package, root / "pyfunc", signature), raw


@pytest.fixture
def demo_registry(served_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A registry on a fresh SQLite store with `demo`: two versions of the served model, champion on version 2.
    MLFLOW_TRACKING_URI names it, for this process and its subprocesses."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name, value in (("MAX_RETRIES", "0"), ("TIMEOUT", "20"), ("BACKOFF_FACTOR", "1")):
        monkeypatch.setenv(f"MLFLOW_HTTP_REQUEST_{name}", value)  # `connected` sets them if unset: not past this test
    mlflow.set_tracking_uri(uri)  # an earlier test's `connected` set the process's URI: this one's wins
    client = MlflowClient(uri)
    client.create_registered_model("demo")
    for _ in range(2):
        client.create_model_version("demo", source=str(served_model))
    client.set_registered_model_alias("demo", "champion", "2")
    return client
