"""Featurize: tensor layout, train-only statistics, HAN sentence indices, the content-key cache, bad model paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components.core.config import FeaturizeParams
from components.core.errors import DataError
from components.data.dataset import SequenceArray
from components.features.contract import FEATURES, load_features, sentence_spans
from components.features.featurize import featurize


@pytest.fixture
def params(tmp_path, tiny_text_model) -> FeaturizeParams:
    return FeaturizeParams(out=tmp_path / "features", text_model=str(tiny_text_model), max_sentence_tokens=6)


def test_layout_and_state(make_dataset, params):
    result = featurize(make_dataset(), params, progress=False)
    assert not result.cached
    tensors, state = load_features(params.out)
    n = 12
    assert state.ids == [f"s{i:02d}" for i in range(n)]
    assert tensors["split"].tolist() == [0] * 6 + [1] * 3 + [2] * 3
    assert tensors["label"].dtype == np.float32 and tensors["label"].shape == (n,)
    ids, mask = tensors["text.input_ids"], tensors["text.attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == n and ids.shape[1] <= params.max_tokens
    assert tensors["text.states"].shape == (*ids.shape, 16) and tensors["text.states"].dtype == np.float16
    assert not tensors["text.states"][~mask].any(), "token states must be zero at padding"
    assert tensors["image.pixels"].shape == (n, 3, 32, 32) and tensors["image.pixels"].dtype == np.uint8
    for m in ("audio", "vision"):
        assert tensors[f"{m}.features"].shape == (n, 4, 3) and tensors[f"{m}.mask"].all()
    assert state.text.hidden_size == 16 and state.audio.dim == 3 and len(state.image.mean) == 3


def test_token_states_match_the_transformer(make_dataset, params, tiny_text_model):
    from transformers import AutoModel

    featurize(make_dataset(), params, progress=False)
    tensors, _ = load_features(params.out)
    model = AutoModel.from_pretrained(tiny_text_model).eval()
    row = 3
    length = int(tensors["text.attention_mask"][row].sum())
    with torch.inference_mode():
        direct = model(input_ids=torch.from_numpy(tensors["text.input_ids"][row : row + 1, :length])).last_hidden_state
    np.testing.assert_allclose(tensors["text.states"][row, :length], direct[0].numpy(), atol=2e-3)


def test_sentence_index_points_at_each_sentence_words(make_dataset, params):
    def two_sentences(samples, sequences, images):
        samples.loc[0, "text"] = "the film was good. the end was bad!"

    featurize(make_dataset(two_sentences), params, progress=False)
    tensors, _ = load_features(params.out)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(params.text_model)
    index, mask, ids = tensors["text.sentence_index"][0], tensors["text.sentence_mask"][0], tensors["text.input_ids"][0]
    words = [tokenizer.convert_ids_to_tokens(ids[index[s][mask[s]]].tolist()) for s in range(2)]
    assert words == [["the", "film", "was", "good", "."], ["the", "end", "was", "bad", "!"]]
    assert not mask[2:].any()


def test_han_truncates_long_sentences(make_dataset, params):
    def long_text(samples, sequences, images):
        samples.loc[0, "text"] = "good " * 20

    featurize(make_dataset(long_text), params, progress=False)
    tensors, _ = load_features(params.out)
    assert tensors["text.sentence_mask"][0, 0].sum() == params.max_sentence_tokens


def test_sentence_spans():
    assert sentence_spans("no punctuation here") == [(0, 19)]
    assert [("a. b!? c"[s:e]).strip() for s, e in sentence_spans("a. b!? c")] == ["a.", "b!?", "c"]


def test_sequences_standardized_with_train_statistics_only(make_dataset, params):
    featurize(make_dataset(), params, progress=False)
    base, _ = load_features(params.out)

    def shift_test_split(samples, sequences, images):
        for m in ("audio", "vision"):
            sequences[m].features[9:] += 100.0  # rows 9-11 are the test split

    params2 = params.model_copy(update={"out": params.out.parent / "shifted"})
    featurize(make_dataset(shift_test_split), params2, progress=False)
    shifted, _ = load_features(params2.out)
    train = base["split"] == 0
    np.testing.assert_allclose(shifted["audio.features"][train], base["audio.features"][train], atol=1e-5)
    frames = base["audio.features"][train].reshape(-1, 3)
    np.testing.assert_allclose(frames.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(frames.std(0), 1, atol=1e-4)
    assert (shifted["audio.features"][9:] > 10).all()


def test_padding_truncation_and_missing_modalities(make_dataset, params):
    def ragged(samples, sequences, images):
        for m in ("audio", "vision"):
            sequences[m] = SequenceArray(sequences[m].features, np.array([4, 2] + [3] * 10, dtype=np.int64))
        samples["seq_index"] = pd.array([pd.NA, *range(1, 12)], dtype="Int64")
        samples["image"] = samples["image"].astype(object)
        samples.loc[1, "image"] = None

    from components.data.dataset import ImageSpec, Manifest, Modalities, RegressionLabel, SequenceSpec, TextSpec

    spec = SequenceSpec(dim=3, max_len=4, allow_missing=True)
    manifest = Manifest(
        name="ragged",
        label=RegressionLabel(),
        modalities=Modalities(text=TextSpec(), image=ImageSpec(allow_missing=True), audio=spec, vision=spec),
    )
    params = params.model_copy(update={"sequence_max_len": 3})
    featurize(make_dataset(ragged, manifest=manifest), params, progress=False)
    tensors, state = load_features(params.out)
    assert state.audio.max_len == 3 and tensors["audio.features"].shape == (12, 3, 3)
    assert tensors["audio.present"].tolist() == [False] + [True] * 11
    assert tensors["audio.mask"][0].sum() == 0 and not tensors["audio.features"][0].any()
    assert tensors["audio.mask"][1].tolist() == [True, True, False]
    assert not tensors["audio.features"][1, 2].any(), "padding stays zero after standardization"
    assert tensors["image.present"].tolist() == [True, False] + [True] * 10
    assert not tensors["image.pixels"][1].any()


def test_unchanged_inputs_hit_the_cache(make_dataset, params):
    data = make_dataset()
    first = featurize(data, params, progress=False)
    before = (params.out / FEATURES).stat().st_mtime_ns
    again = featurize(data, params.model_copy(update={"workers": 3}), progress=False)  # speed only
    assert again.cached and again.state.key == first.state.key
    assert (params.out / FEATURES).stat().st_mtime_ns == before
    assert again.seconds < 1.0
    changed = featurize(data, params.model_copy(update={"max_tokens": 8}), progress=False)
    assert not changed.cached and changed.state.key != first.state.key
    (data / "samples.parquet").write_bytes((data / "samples.parquet").read_bytes() + b"")  # same bytes: same key
    assert featurize(data, params.model_copy(update={"max_tokens": 8}), progress=False).cached


def test_changed_data_is_featurized_again(make_dataset, params):
    data = make_dataset()
    first = featurize(data, params, progress=False)
    (data / "images" / "s00.png").write_bytes((data / "images" / "s01.png").read_bytes())
    assert featurize(data, params, progress=False).state.key != first.state.key


def test_missing_model_directory_is_a_clear_error(make_dataset, params, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="no such directory") as error:
        featurize(make_dataset(), params.model_copy(update={"text_model": str(tmp_path / "nope")}), progress=False)
    assert str(tmp_path / "nope") in str(error.value)
    with pytest.raises(DataError, match="not found in the local Hugging Face cache"):
        featurize(make_dataset(), params.model_copy(update={"text_model": "no-such-org/no-such-model"}))
    assert not params.out.exists(), "a failed featurize writes nothing"


def test_han_axes_end_where_the_sentences_do(make_dataset, params):
    # HAN's word GRU runs over every slot: the axes stop at the longest text's sentences, not at the configured
    # max_sentences x max_sentence_tokens (4 x 6 here), as the token axis stops at the longest text.
    def short_texts(samples, sequences, images):
        samples["text"] = "good film."
        samples.loc[0, "text"] = "good. bad."

    featurize(make_dataset(short_texts), params, progress=False)
    mask = load_features(params.out)[0]["text.sentence_mask"]
    assert mask.shape[1] == 2 < 4 and mask.shape[2] < params.max_sentence_tokens
    assert mask.any((0, 2))[-1] and mask.any((0, 1))[-1], "the last slot of each axis is used"
