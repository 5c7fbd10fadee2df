"""`msa data`: write the demo dataset or import an outside format as the canonical dataset, then summarise it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from components.core.atomic import check_replaceable
from components.core.config import DEFAULT_PARAMS, load_params
from components.data.data_version import push_dataset, record_in_dvc
from components.data.dataset import MANIFEST, SPLITS, read_dataset
from components.data.demo import generate_demo
from components.data.importers import import_clips_csv, import_image_text_csv, import_mmsa, import_text_tsv
from components.data.importers.clips import MAX_LEN_AUDIO, MAX_LEN_VISION
from components.data.importers.labelled_csv import TASKS
from flows.commands.options import ParamsOpt, out

__all__ = ["data_app"]

data_app = typer.Typer(no_args_is_help=True, help="Create or import the canonical dataset.")
import_app = typer.Typer(no_args_is_help=True, help="Convert an outside format into the canonical dataset.")
data_app.add_typer(import_app, name="import")

OutOpt = Annotated[Path | None, typer.Option("--out", help="Dataset directory to write (default: data.raw in params).")]
NameOpt = Annotated[str | None, typer.Option(help="Dataset name in the manifest (default: the file's stem).")]
LabelMin = Annotated[float, typer.Option(help="Lowest valid regression label (MOSI/MOSEI: -3, CH-SIMS: -1).")]
LabelMax = Annotated[float, typer.Option(help="Highest valid regression label.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split made when the input has none.")]
ValidFrac = Annotated[float, typer.Option(help="Share of samples put in valid when the input has no split.")]
TestFrac = Annotated[float, typer.Option(help="Share of samples put in test when the input has no split.")]


def _task(task: str) -> str:
    if task not in TASKS:
        raise typer.BadParameter(f"{task!r} is not one of {', '.join(TASKS)}")
    return task


TaskOpt = Annotated[
    str,
    typer.Option(
        help="auto, regression or classification (auto: classification if a label is not a number).", callback=_task
    ),
]
ClassesOpt = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated class names (default: the labels seen).",
        callback=lambda names: [c.strip() for c in names.split(",")] if names else None,
    ),
]


@contextmanager
def _writing_dataset(out_dir: Path | None, params: Path) -> Iterator[Path]:
    """Yield where the dataset goes (--out, else data.raw); once written, read it back and summarise it."""
    started = time.perf_counter()
    path = out_dir or load_params(params).data.raw
    check_replaceable(path, MANIFEST)  # before the work: a mistyped --out fails at once, and nothing is touched
    yield path
    dataset = read_dataset(path)
    counts = dataset.samples["split"].value_counts()
    splits = ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS)
    kind = "SYNTHETIC " if dataset.manifest.synthetic else ""
    out.print(
        f"Wrote {kind}dataset '{dataset.manifest.name}' v{dataset.manifest.version} to {path}: "
        f"{len(dataset.samples)} samples ({splits}); modalities: {', '.join(dataset.manifest.modalities.present)} "
        f"[{time.perf_counter() - started:.1f}s]"
    )
    if (recorded := record_in_dvc(path)) is not None:
        out.print(recorded.summary(), markup=False)


DATASET_PUSHED = "msa.dataset.pushed"  # the Prefect event the retrain deployment's trigger expects


@data_app.command("push")
def data_push(
    dvcfile: Annotated[Path, typer.Option("--dvc-file", help="The .dvc file of the dataset.")] = Path("data.dvc"),
    remote: Annotated[str | None, typer.Option(help="DVC remote (default: the repository's default remote).")] = None,
) -> None:
    """Upload the dataset version DVC records (`dvc push data.dvc`), then, where PREFECT_API_URL names a Prefect
    server, emit the event `msa.dataset.pushed` that starts the retrain deployment (prefect.yaml). Commit and push
    the .dvc file first: the retrain run clones the repository and trains on the version it names."""
    pushed = push_dataset(dvcfile, remote)
    out.print(pushed.summary(), markup=False)
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        from prefect.events import emit_event
        from prefect.events.worker import EventsWorker

        emit_event(
            event=DATASET_PUSHED,
            resource={"prefect.resource.id": f"msa.dataset.{pushed.dataset}", "prefect.resource.name": pushed.dataset},
            payload={
                "md5": pushed.md5,
                "version": pushed.version,
                "dvc_file": str(dvcfile),
                "uploaded": pushed.uploaded,
            },
        )
        EventsWorker.drain_all()  # sent before the command exits
        out.print(f"data push: event {DATASET_PUSHED} sent to {PREFECT_API_URL.value()}", markup=False)


@data_app.command("demo")
def data_demo(
    size: Annotated[int | None, typer.Option(min=30, help="Number of samples (default: data.demo.size).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default: data.demo.seed).")] = None,
    media: Annotated[
        bool, typer.Option("--media", help="Audio and vision as WAV and MP4 clips instead of feature sequences.")
    ] = False,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Write the deterministic SYNTHETIC demo dataset (byte-identical for the same size and seed)."""
    demo = load_params(params).data.demo
    with _writing_dataset(out_dir, params) as path:
        size, seed = demo.size if size is None else size, demo.seed if seed is None else seed
        generate_demo(path, size=size, seed=seed, media=media)


@import_app.command("mmsa")
def import_mmsa_command(
    file: Annotated[Path, typer.Argument(help="MMSA pickle (CMU-MOSI / MOSEI / CH-SIMS layout).")],
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Load the pickle. Pickle runs code: only for files you trust.")
    ] = False,
    zero_nonfinite: Annotated[
        bool, typer.Option("--zero-nonfinite", help="Replace NaN/inf features by 0, as MMSA's own loader does.")
    ] = False,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import an MMSA pickle: train/valid/test with raw_text, audio, vision, lengths, regression_labels, id."""
    with _writing_dataset(out_dir, params) as path:
        import_mmsa(
            file,
            path,
            trust_pickle=trust_pickle,
            name=name,
            label_min=label_min,
            label_max=label_max,
            zero_nonfinite=zero_nonfinite,
        )


@import_app.command("csv")
def import_csv_command(
    file: Annotated[Path, typer.Argument(help="CSV with columns id, text, image, label and optional split.")],
    image_root: Annotated[Path, typer.Option(help="Directory the CSV's image paths are relative to.")],
    task: TaskOpt = "auto",
    classes: ClassesOpt = None,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    seed: SeedOpt = 0,
    valid_frac: ValidFrac = 0.1,
    test_frac: TestFrac = 0.1,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import image-text posts (MVSA / Twitter-2015 style)."""
    with _writing_dataset(out_dir, params) as path:
        import_image_text_csv(
            file,
            path,
            image_root=image_root,
            name=name,
            task=task,  # type: ignore[arg-type]  # the option's callback checked it is one of TASKS
            classes=classes,  # type: ignore[arg-type]  # the option's callback made it a list
            label_min=label_min,
            label_max=label_max,
            seed=seed,
            valid_frac=valid_frac,
            test_frac=test_frac,
        )


@import_app.command("clips")
def import_clips_command(
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV with columns id, text, label, audio and/or video, and optional split; or MMSA-FET's label.csv."
        ),
    ],
    media_root: Annotated[Path, typer.Option(help="Directory the CSV's audio and video paths are relative to.")],
    task: TaskOpt = "auto",
    classes: ClassesOpt = None,
    max_len_audio: Annotated[
        int, typer.Option(min=1, help="Audio frames kept per sample (25 a second at featurize's default).")
    ] = MAX_LEN_AUDIO,
    max_len_vision: Annotated[
        int, typer.Option(min=1, help="Video frames kept per sample (5 a second at featurize's default).")
    ] = MAX_LEN_VISION,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    seed: SeedOpt = 0,
    valid_frac: ValidFrac = 0.1,
    test_frac: TestFrac = 0.1,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import utterance clips (MMSA-FET label.csv style): WAV/FLAC audio and MP4/WebM video, copied as they are."""
    with _writing_dataset(out_dir, params) as path:
        import_clips_csv(
            file,
            path,
            media_root=media_root,
            name=name,
            task=task,  # type: ignore[arg-type]  # the option's callback checked it is one of TASKS
            classes=classes,  # type: ignore[arg-type]  # the option's callback made it a list
            label_min=label_min,
            label_max=label_max,
            seed=seed,
            valid_frac=valid_frac,
            test_frac=test_frac,
            max_len_audio=max_len_audio,
            max_len_vision=max_len_vision,
        )


@import_app.command("tsv")
def import_tsv_command(
    train: Annotated[Path, typer.Argument(help="text<TAB>label file with a header line; the train split.")],
    valid: Annotated[Path | None, typer.Option(help="File for the valid split (default: carved from train).")] = None,
    test: Annotated[Path | None, typer.Option(help="File for the test split (default: carved from train).")] = None,
    name: NameOpt = None,
    label_min: LabelMin = -3.0,
    label_max: LabelMax = 3.0,
    seed: SeedOpt = 0,
    valid_frac: ValidFrac = 0.1,
    test_frac: TestFrac = 0.1,
    out_dir: OutOpt = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Import text-only `text<TAB>label` files (e.g. ../shared/datasets/mosi-text)."""
    with _writing_dataset(out_dir, params) as path:
        import_text_tsv(
            train,
            path,
            valid=valid,
            test=test,
            name=name,
            label_min=label_min,
            label_max=label_max,
            seed=seed,
            valid_frac=valid_frac,
            test_frac=test_frac,
        )
