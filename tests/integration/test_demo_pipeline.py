"""The pipeline as a new user meets it: `msa data demo`, `dvc repro` (validate -> featurize -> train -> evaluate
-> robustness -> compress) twice, data.dvc stable, a forced re-run deterministic, then `msa run` (the Prefect flow)
beside it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from components.data.dataset import Dataset, read_dataset
from components.models.store import digest
from tests.integration.shell import BIN, run

pytestmark = pytest.mark.integration


def test_demo_matches_data_dvc_and_dvc_repro_runs_once(project, msa):
    # Byte-identical demo data: the hash recorded in data.dvc still describes a freshly generated dataset, which
    # goes into DVC's cache at once.
    recorded = (project / "data.dvc").read_text()
    demo = msa("data", "demo", cwd=project)
    assert (project / "data.dvc").read_text() == recorded
    assert "DVC: data.dvc already recorded these bytes" in demo.stdout, demo.stdout
    assert "up to date" in run([str(BIN / "dvc"), "status", "data.dvc"], cwd=project).stdout

    # The pipeline on 200 of them, 2 epochs (the full run is a benchmark).
    msa("data", "demo", "--size", "200", cwd=project)
    params = project / "params.yaml"
    shorter = {
        "  epochs: 30": "  epochs: 2",
        "  finetune_epochs: 2": "  finetune_epochs: 1",
        "  latency_runs: 50": "  latency_runs: 5",
        "  variants: [int8, prune_unstructured, prune_structured, onnx_fp32, onnx_int8]": (
            "  variants: [prune_unstructured, onnx_int8]"  # one pruned, and the one registration serves
        ),
    }
    text = params.read_text()
    for full, short in shorter.items():
        assert full in text
        text = text.replace(full, short)
    params.write_text(text)

    first = run([str(BIN / "dvc"), "repro"], cwd=project)
    for stage in ("validate", "featurize", "train", "evaluate", "robustness", "compress"):
        assert f"Running stage '{stage}'" in first.stdout
    assert "train: 2 epochs" in first.stdout
    assert (project / "models/trained/model.safetensors").is_file()
    metrics = json.loads((project / "reports/evaluation.json").read_text())
    assert metrics.pop("model_digest") == digest(project / "models/trained")
    assert set(metrics) == {"valid", "test"} and {"lstm", "image", "fusion"} <= set(metrics["test"])
    headline = json.loads((project / "metrics/evaluate.json").read_text())
    assert headline["test"]["fusion"]["mae"] == round(metrics["test"]["fusion"]["mae"], 4)
    robust = json.loads((project / "reports/robustness.json").read_text())
    assert robust["clean"]["fusion"]["acc2"] == pytest.approx(metrics["test"]["fusion"]["acc2"], abs=1e-6)
    assert set(robust["perturbations"]) == set(yaml.safe_load(params.read_text())["robustness"]["perturbations"])
    assert len(list((project / "metrics/robustness").glob("*.csv"))) == len(robust["perturbations"])
    compression = json.loads((project / "reports/compression.json").read_text())
    assert set(compression["variants"]) == {"prune_unstructured", "onnx_int8"}
    report = json.loads((project / "reports/validation.json").read_text())
    assert report["success"] is True and report["n_samples"] == 200
    assert (project / "reports/data_docs/index.html").is_file()
    assert "Data and pipelines are up to date" in run([str(BIN / "dvc"), "status"], cwd=project).stdout
    assert set(json.loads((project / "metrics/compress.json").read_text())) == set(compression["variants"])

    second = run([str(BIN / "dvc"), "repro"], cwd=project)
    assert "Running stage" not in second.stdout
    assert "up to date" in second.stdout, second.stdout

    # A forced re-run on the same inputs records the same lock: every stage's outputs are deterministic, the
    # trained weights, checkpoint and compressed models included. Only the compression report differs: it holds
    # measured latencies. Without its checkpoint, train trains again rather than continuing the finished run.
    lock = _hashes(project)
    shutil.rmtree(project / "models/trained/checkpoints")
    forced = run([str(BIN / "dvc"), "repro", "--force"], cwd=project)
    assert "train: 2 epochs (last epoch) in" in forced.stdout and "resumed" not in forced.stdout, forced.stdout
    said = forced.stdout + forced.stderr  # not at a terminal: the device once, a line per epoch, no bar
    assert "train: cpu, 1 thread" in said and "epoch 1/2  loss " in said and "epoch 2/2  loss " in said, said
    assert _hashes(project) == lock

    # `msa run` after `dvc repro` on unchanged inputs: the Prefect flow reads the same params and calls the same
    # functions, so featurize hits its cache and train continues the finished checkpoint (no epoch runs); then it
    # registers into MLflow's default store. The features and weights DVC recorded are untouched, so a following
    # `dvc repro` retrains nothing. Only compress runs again, and for real (not from DVC's run cache): its report
    # holds latencies msa run measured anew.
    flow = msa("run", cwd=project)
    logs = flow.stdout + flow.stderr
    assert "msa-demo version 1 is champion" in flow.stdout, logs
    # It ends saying where everything is and how to use the model.
    for line in (
        "models/trained/model.json",
        "reports/validation.html",
        "mlflow ui --backend-store-uri sqlite:///mlflow.db",
        "?workflowType=machine_learning",
        "msa predict --model models:/msa-demo/1 --input examples/rows.jsonl",
        "mlflow models serve -m models:/msa-demo/1",
    ):
        assert line in flow.stdout, flow.stdout
    assert "featurize: unchanged inputs" in logs and "resumed after epoch 2" in logs and "0 epochs" not in logs
    assert (project / "mlflow.db").is_file() and any((project / "mlruns").rglob("MLmodel"))
    after = run([str(BIN / "dvc"), "repro"], cwd=project)
    for stage in ("validate", "featurize", "train"):
        assert f"Running stage '{stage}'" not in after.stdout, after.stdout
    assert "Running stage 'compress'" in after.stdout and "compress: prune_unstructured" in after.stdout, after.stdout
    assert {k: v for k, v in _hashes(project).items() if not k.startswith("compress:")} == {
        k: v for k, v in lock.items() if not k.startswith("compress:")
    }
    skipped = msa("run", cwd=project)
    assert "nothing registered" in skipped.stdout and "version 1" in skipped.stdout


def _hashes(project) -> dict[str, str]:
    """Every output's hash in dvc.lock, but the compression report's and headline's (latencies are measurements)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out["md5"]
        for stage, entry in lock["stages"].items()
        for out in entry.get("outs", [])
        if out["path"] not in ("reports/compression.json", "metrics/compress.json")
    }


def test_dataset_round_trips_through_the_default_local_remote(project, msa):
    demo = msa("data", "demo", "--size", "60", cwd=project)  # other bytes than data.dvc records: recorded anew
    assert "DVC: data.dvc records the new data" in demo.stdout, demo.stdout
    assert "up to date" in run([str(BIN / "dvc"), "status", "data.dvc"], cwd=project).stdout
    run([str(BIN / "dvc"), "push"], cwd=project)  # the stages' outputs were never made here: only the data goes
    assert (project / "dvc-storage").is_dir()  # the remote configured in .dvc/config, beside the code
    original = {p.relative_to(project): p.read_bytes() for p in (project / "data/raw").rglob("*") if p.is_file()}
    shutil.rmtree(project / "data/raw")
    shutil.rmtree(project / ".dvc/cache")
    run([str(BIN / "dvc"), "pull", "data.dvc"], cwd=project)  # the dataset alone: nothing was trained here
    restored = {p.relative_to(project): p.read_bytes() for p in (project / "data/raw").rglob("*") if p.is_file()}
    assert restored == original


def test_cli_validate_fails_with_summary_and_nonzero_exit(project, msa):
    msa("data", "demo", "--size", "60", "--out", "data/small", cwd=project)
    (project / "data/small/images/demo-00003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    result = msa("validate", "--data", "data/small", cwd=project, check=False)
    assert result.returncode == 1
    assert "demo-00003" in result.stderr and "decode" in result.stderr
    report = json.loads((project / "reports/validation.json").read_text())
    assert report["success"] is False


def test_cli_reports_bad_input_in_one_line_without_traceback(project, msa, tmp_path):
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04junk")
    result = msa("data", "import", "mmsa", str(tmp_path / "x.pkl"), "--out", "data/mosi", cwd=project, check=False)
    assert result.returncode == 1
    assert "--trust-pickle" in result.stderr and "Traceback" not in result.stderr
    assert not (project / "data/mosi").exists()

    (project / "params.yaml").write_text("data:\n  rwa: data/raw\n")
    result = msa("data", "demo", cwd=project, check=False)
    assert result.returncode == 1 and "unknown key 'data.rwa'" in result.stderr


def _modality_features(dataset: Dataset) -> dict[str, np.ndarray]:
    """Simple per-modality summaries: bag of words, mean colour, and mean/slope/max of each sequence."""
    samples = dataset.samples
    words = [t.lower().replace(",", " ").replace(".", " ").split() for t in samples["text"]]
    vocab = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
    text = np.zeros((len(samples), len(vocab)))
    for row, ws in enumerate(words):
        text[row, [vocab[w] for w in ws]] = 1.0
    image = np.stack(
        [np.asarray(Image.open(dataset.image_path(p)), dtype=float).reshape(-1, 3).mean(0) for p in samples["image"]]
    )
    features = {"text": text, "image": image}
    for name, seq in dataset.sequences.items():
        steps = np.arange(seq.features.shape[1])[None, :, None]
        mask = steps < seq.lengths[:, None, None]
        length = seq.lengths[:, None]
        mean = (seq.features * mask).sum(1) / length
        slope = (seq.features * mask * (steps - length[:, :, None] / 2)).sum(1) / length**2
        peak = np.where(mask, seq.features, -np.inf).max(1)
        features[name] = np.concatenate([mean, slope, peak], 1)
    return features


def _sign_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Ridge regression on train; Acc-2 (non-zero labels) on the other splits."""
    z = np.c_[(x - x[train].mean(0)) / (x[train].std(0) + 1e-6), np.ones(len(x))]
    w = np.linalg.solve(z[train].T @ z[train] + np.eye(z.shape[1]), z[train].T @ y[train])
    held_out = ~train & (y != 0)
    return float(((z[held_out] @ w > 0) == (y[held_out] > 0)).mean())


def test_demo_label_needs_the_modalities_together(tmp_path):
    """No single modality reaches what all of them reach together (same linear model for each)."""
    from components.data.demo import generate_demo

    dataset = read_dataset(generate_demo(tmp_path / "raw", size=1000, seed=0))
    y = dataset.samples["label"].to_numpy()
    train = (dataset.samples["split"] == "train").to_numpy()
    features = _modality_features(dataset)
    single = {name: _sign_accuracy(x, y, train) for name, x in features.items()}
    together = _sign_accuracy(np.concatenate(list(features.values()), axis=1), y, train)
    assert max(single.values()) < 0.82, single
    assert together - max(single.values()) > 0.12, (single, together)
