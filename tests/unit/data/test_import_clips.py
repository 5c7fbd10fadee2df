"""`msa data import clips`: a CSV of utterances whose audio and video files are copied into the dataset, each path
confined to --media-root, and bad rows refused with one line naming the file, row and rule."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.core.errors import ConfigError, DataError
from components.data import demo
from components.data.dataset import SPLITS, read_dataset
from components.data.demo import _video_clip
from components.data.importers import import_clips_csv
from tests.hardening import guarded, msa


def wav_bytes(seconds: float = 0.2, rate: int = 16_000, seed: int = 0) -> bytes:
    return demo.wav_bytes(np.random.default_rng(seed).normal(0.0, 0.1, int(seconds * rate)), rate)


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return _video_clip(np.random.default_rng(0), 1, 2.0, 1.0)


@pytest.fixture
def media(tmp_path: Path, mp4: bytes) -> Path:
    root = tmp_path / "media"
    (root / "wav").mkdir(parents=True)
    (root / "mp4").mkdir()
    (root / "wav" / "0.wav").write_bytes(wav_bytes(seed=0))
    (root / "wav" / "1.FLAC").write_bytes(b"not decoded here")  # validation decodes clips, the importer copies
    (root / "mp4" / "0.mp4").write_bytes(mp4)
    (root / "mp4" / "1.webm").write_bytes(b"webm, not decoded here")
    return root


def write_csv(root: Path, lines: list[str], name: str = "label.csv") -> Path:
    path = root / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CSV_LINES = [
    "id,text,label,audio,video,split",
    "u/1,great movie,1.5,wav/0.wav,mp4/0.mp4,train",
    'u_1,"so, bad",-2,wav/1.FLAC,,valid',
    "u3,fine,0.5,,mp4/1.webm,test",
    "u4,meh,0,,mp4/0.mp4,train",
]


def test_mmsa_fet_label_csv_imports_as_it_is(tmp_path: Path, mp4: bytes) -> None:
    """MMSA-FET's dataset directory: label.csv with video_id, clip_id, label_T/A/V, annotation and mode; each clip
    at Raw/<video_id>/<clip_id>.mp4, its audio the video's soundtrack."""
    root = tmp_path / "MOSI"
    for video_id, clip_id in (("03bSnISJMiM", "1"), ("03bSnISJMiM", "2"), ("0h-zjBukYpk", "13")):
        (root / "Raw" / video_id).mkdir(parents=True, exist_ok=True)
        (root / "Raw" / video_id / f"{clip_id}.mp4").write_bytes(mp4)
    path = write_csv(
        root,
        [
            "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode",
            "03bSnISJMiM,1,a lot of sad parts,-0.8,,,,Negative,train",
            "03bSnISJMiM,2,there is sad parts,-0.6,,,,Negative,valid",
            "0h-zjBukYpk,13,but it was good,2.4,,,,Positive,test",
        ],
    )
    ds = read_dataset(import_clips_csv(path, tmp_path / "out", media_root=root))
    m = ds.manifest
    assert m.modalities.present == ["text", "audio", "vision"] and m.label.kind == "regression"
    assert not m.modalities.audio.allow_missing and not m.modalities.vision.allow_missing
    s = ds.samples
    assert list(s["id"]) == ["03bSnISJMiM$_$1", "03bSnISJMiM$_$2", "0h-zjBukYpk$_$13"]  # MMSA's own ids
    assert list(s["split"]) == ["train", "valid", "test"] and list(s["label"]) == [-0.8, -0.6, 2.4]
    assert s["audio"].isna().all() and list(s["video"]) == [
        "video/03bSnISJMiM___1.mp4",
        "video/03bSnISJMiM___2.mp4",
        "video/0h-zjBukYpk___13.mp4",
    ]
    assert ds.clip_files("audio") == ds.clip_files("vision")  # the soundtrack
    with pytest.raises(
        DataError, match=r"row 1 \(id 03bSnISJMiM\$_\$1\): video file not found: .*Raw/03bSnISJMiM/1.mp4"
    ):
        (root / "Raw" / "03bSnISJMiM" / "1.mp4").unlink()
        import_clips_csv(path, tmp_path / "again", media_root=root)


def test_clips_import_round_trips(media: Path, tmp_path: Path, mp4: bytes) -> None:
    ds = read_dataset(import_clips_csv(write_csv(media, CSV_LINES), tmp_path / "out", media_root=media))
    m = ds.manifest
    assert m.name == "label" and m.source == "label.csv" and m.label.kind == "regression"
    assert m.modalities.present == ["text", "audio", "vision"] and m.modalities.clips.keys() == {"audio", "vision"}
    # every row has an audio file or a video's soundtrack; u_1 has no video
    assert m.modalities.audio.max_len == 500 and not m.modalities.audio.allow_missing
    assert m.modalities.vision.max_len == 100 and m.modalities.vision.allow_missing
    s = ds.samples
    assert list(s.columns) == ["id", "split", "text", "label", "image", "seq_index", "audio", "video"]
    assert list(s["id"]) == ["u/1", "u_1", "u3", "u4"]
    assert list(s["split"]) == ["train", "valid", "test", "train"]
    assert s["text"][1] == "so, bad" and list(s["label"]) == [1.5, -2.0, 0.5, 0.0]
    assert s["image"].isna().all() and s["seq_index"].isna().all() and str(s["seq_index"].dtype) == "Int64"
    # u/1 and u_1 sanitise alike, and stay apart (a sample's audio and video share a stem); suffixes are lowercased
    assert list(s["audio"].fillna("-")) == ["audio/u_1.wav", "audio/u_1-2.flac", "-", "-"]
    assert list(s["video"].fillna("-")) == ["video/u_1.mp4", "-", "video/u3.webm", "video/u4.mp4"]
    root = tmp_path / "out"
    assert (root / "audio" / "u_1.wav").read_bytes() == (media / "wav" / "0.wav").read_bytes()
    assert (root / "audio" / "u_1-2.flac").read_bytes() == b"not decoded here"
    assert (root / "video" / "u_1.mp4").read_bytes() == mp4 == (root / "video" / "u4.mp4").read_bytes()
    assert (root / "video" / "u3.webm").read_bytes() == b"webm, not decoded here"
    assert ds.clip_files("audio") == [
        root / "audio/u_1.wav",
        root / "audio/u_1-2.flac",
        root / "video/u3.webm",
        root / "video/u4.mp4",
    ]
    assert ds.clip_files("vision") == [root / "video/u_1.mp4", None, root / "video/u3.webm", root / "video/u4.mp4"]


def test_clips_carved_split_audio_only_and_options(media: Path, tmp_path: Path) -> None:
    lines = ["id,text,label,audio"] + [f"c{i},clip {i},{'pos' if i % 2 else 'neg'},wav/0.wav" for i in range(20)]
    path = write_csv(media, [*lines, "c20,no clip,pos,"])
    ds = read_dataset(
        import_clips_csv(path, tmp_path / "a", media_root=media, seed=3, name="mine", max_len_audio=7, valid_frac=0.2)
    )
    m = ds.manifest
    assert m.name == "mine" and m.label.kind == "classification" and m.label.classes == ["neg", "pos"]
    assert m.modalities.present == ["text", "audio"] and m.modalities.vision is None
    assert m.modalities.audio.max_len == 7 and m.modalities.audio.allow_missing  # c20 has no clip
    assert ds.samples["split"].value_counts().to_dict() == {"train": 15, "valid": 4, "test": 2}
    assert ds.samples["video"].isna().all() and pd.isna(ds.samples["audio"].iloc[-1])
    again = read_dataset(import_clips_csv(path, tmp_path / "b", media_root=media, seed=3, valid_frac=0.2))
    assert list(again.samples["split"]) == list(ds.samples["split"])


def test_clips_without_text_declare_no_text(media: Path, tmp_path: Path) -> None:
    path = write_csv(media, ["id,text,label,video", "v1,,1,mp4/0.mp4", "v2, ,-1,mp4/0.mp4"])
    ds = read_dataset(import_clips_csv(path, tmp_path / "out", media_root=media))
    assert ds.manifest.modalities.present == ["vision"] and not ds.manifest.modalities.vision.allow_missing
    assert ds.samples["text"].isna().all()


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink", "symlinked-dir"])
def test_clip_paths_stay_inside_media_root(media: Path, tmp_path: Path, where: str) -> None:
    outside = tmp_path / "secret.wav"
    outside.write_bytes(wav_bytes())
    value = {
        "dotdot": "../secret.wav",
        "absolute": str(outside),
        "symlink": "wav/link.wav",
        "symlinked-dir": "elsewhere/secret.wav",
    }[where]
    (media / "wav" / "link.wav").symlink_to(outside)
    (media / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    path = write_csv(media, ["id,text,label,audio", "a,hi,1,wav/0.wav", f"b,ho,2,{value}"])
    root = re.escape(str(media.resolve()))
    message = rf"label.csv, row 2 \(id b\): audio '{re.escape(value)}' is outside --media-root {root}$"
    with pytest.raises(DataError, match=message):
        import_clips_csv(path, tmp_path / "out", media_root=media)
    assert not (tmp_path / "out").exists()


def test_a_symlink_inside_the_root_is_followed(media: Path, tmp_path: Path) -> None:
    (media / "wav" / "alias.wav").symlink_to("0.wav")
    path = write_csv(media, ["id,text,label,audio", "a,hi,1,wav/alias.wav", "b,ho,2,wav/0.wav"])
    import_clips_csv(path, tmp_path / "out", media_root=media)
    assert (tmp_path / "out" / "audio" / "a.wav").read_bytes() == (media / "wav" / "0.wav").read_bytes()
    assert not (tmp_path / "out" / "audio" / "a.wav").is_symlink()


@pytest.mark.parametrize(
    ("audio", "video", "message"),
    [
        ("wav/9.wav", "", r"row 2 \(id b\): audio file not found: .*wav/9.wav"),
        ("", "mp4/9.mp4", r"row 2 \(id b\): video file not found: .*mp4/9.mp4"),
        ("wav", "", r"row 2 \(id b\): audio 'wav' has an unsupported suffix; use one of \['.wav', '.flac'\]"),
        ("mp4/0.mp4", "", r"row 2 \(id b\): audio 'mp4/0.mp4' has an unsupported suffix"),
        ("", "wav/0.wav", r"row 2 \(id b\): video 'wav/0.wav' has an unsupported suffix; use one of \['.mp4', '.webm'"),
        ("wav/dir.wav", "", r"row 2 \(id b\): audio file not found"),
        ("wav/notes.wav", "", r"row 2 \(id b\): audio file not found"),  # a dangling link
        ("wav/text.wav", "", r"row 2 \(id b\): audio 'wav/text.wav' has an unsupported suffix"),  # -> notes.txt
    ],
)
def test_bad_clip_rows(media: Path, tmp_path: Path, audio: str, video: str, message: str) -> None:
    (media / "wav" / "dir.wav").mkdir()
    (media / "wav" / "notes.wav").symlink_to("gone.wav")
    (media / "notes.txt").write_text("not a clip")
    (media / "wav" / "text.wav").symlink_to("../notes.txt")
    path = write_csv(media, ["id,text,label,audio,video", "a,hi,1,wav/0.wav,mp4/0.mp4", f"b,ho,2,{audio},{video}"])
    with pytest.raises(DataError, match=message):
        import_clips_csv(path, tmp_path / "out", media_root=media)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("id,text,audio,video", r"missing column 'label'; found columns \['id', 'text', 'audio', 'video'\]"),
        ("id,label,audio", r"missing column 'text'"),
        ("id,text,label,image", r"missing column 'audio' or 'video'; found columns .*at least one of \['audio', 'v"),
        ("", r"missing column 'id'"),
        ("id,text,label,audio", r"no rows after the header: nothing to import"),
    ],
)
def test_missing_columns(media: Path, tmp_path: Path, header: str, message: str) -> None:
    path = write_csv(media, [header] if header else [])
    with pytest.raises(DataError, match=rf"label.csv: {message}"):
        import_clips_csv(path, tmp_path / "out", media_root=media)


def test_bad_rows_labels_and_settings(media: Path, tmp_path: Path) -> None:
    path = write_csv(media, ["id,text,label,audio", "a,hi,1,wav/0.wav,extra"])
    with pytest.raises(DataError, match=r"row 1: expected 4 fields \(id, text, label, audio\), found 5"):
        import_clips_csv(path, tmp_path / "out", media_root=media)
    path = write_csv(media, ["id,text,label,audio", "a,hi,1,wav/0.wav", "b,ho,high,wav/0.wav"])
    with pytest.raises(DataError, match=r"row 2 \(id b\): label 'high' is not a number"):
        import_clips_csv(path, tmp_path / "out", media_root=media, task="regression")
    with pytest.raises(DataError, match=r"nowhere: not a directory"):
        import_clips_csv(path, tmp_path / "out", media_root=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"--max-len-vision must be at least 1; got 0"):
        import_clips_csv(path, tmp_path / "out", media_root=media, max_len_vision=0)


def test_cli_imports_clips(guarded_project: Path, media: Path) -> None:
    write_csv(media, CSV_LINES)
    source = ["clips", media / "label.csv", "--media-root", media]
    outcome = msa("data", "import", *source, "--out", "clips", "--max-len-vision", "12")
    assert outcome.code == 0, outcome
    assert "4 samples" in outcome.stdout and "modalities: text, audio, vision" in outcome.stdout
    ds = read_dataset(guarded_project / "clips")
    assert ds.manifest.modalities.vision.max_len == 12 and set(ds.samples["split"]) <= set(SPLITS)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["id,text,label,audio", "a,hi,1,../secret.wav"], "label.csv, row 1 (id a): audio '../secret.wav' is outside"),
        (["id,text,label,audio", "a,hi,1,wav/9.wav"], "label.csv, row 1 (id a): audio file not found"),
        (["id,text,label", "a,hi,1"], "missing column 'audio' or 'video'"),
        (
            ["id,text,label,audio", "a,hi,1,wav/0.wav", "b,ho,2,wav/0.wav", "a,hey,0,wav/0.wav"],
            "label.csv, row 3 (id a): same id as row 1: ids must be unique",
        ),
        (
            ["id,text,label,audio,split", "a,hi,1,wav/0.wav,train", "b,ho,2,wav/0.wav,TRAIN "],
            "label.csv, row 2 (id b): split 'TRAIN ' is not one of train, valid, test (lower case, no spaces)",
        ),
        (["id,text,label,audio,split", "a,hi,1,wav/0.wav,Valid"], "row 1 (id a): split 'Valid' is not one of"),
        (
            ["video_id,clip_id,text,label,mode", "v,1,hi,1,train", "v,1,again,2,test"],
            "label.csv, row 2 (id v$_$1): same id as row 1: ids must be unique",
        ),
        (
            ["id,text,label,audio", "a,hi,1,wav/0.wav"],
            "--label-min must be below --label-max; got --label-min 3 and --label-max -3",
        ),
    ],
)
def test_cli_bad_import_is_one_line_exit_1(guarded_project: Path, media: Path, lines: list[str], message: str) -> None:
    (media.parent / "secret.wav").write_bytes(wav_bytes())
    write_csv(media, lines)
    before = guarded(guarded_project)
    reversed_range = ("--label-min", "3", "--label-max", "-3") if "--label-min" in message else ()
    outcome = msa(
        "data", "import", "clips", media / "label.csv", "--media-root", media, "--out", "clips", *reversed_range
    )
    assert outcome.code == 1, outcome
    assert message in outcome.error and len(outcome.error.splitlines()) == 1, outcome.stderr
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert not (guarded_project / "clips").exists() and guarded(guarded_project) == before
