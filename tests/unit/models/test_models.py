from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from components.core.config import TEXT_MODELS, ModelParams, TextCNNParams
from components.models import HAN, ImageSpec, LabelSpec, ModelSpec, MultiTaskModel, SequenceSpec, TextCNN, TextSpec
from components.models.encoders import masked_softmax
from components.models.text import MeanPool

B, L, E, S, W, T, PIXELS = 4, 12, 12, 3, 4, 7, 16
DIMS = {"audio": 5, "vision": 3}
ALL_HEADS = (*TEXT_MODELS, "image", "audio", "vision", "fusion")
PARAMS = ModelParams(hidden=8, dropout=0.1, textcnn=TextCNNParams(filter_sizes=(2, 3), feature_maps=4, dropout=0.1))


def make_spec(
    heads: tuple[str, ...] = ALL_HEADS,
    text_models: tuple[str, ...] | None = TEXT_MODELS,
    image: bool = True,
    sequences: tuple[str, ...] = ("audio", "vision"),
    classes: tuple[str, ...] = (),
    text: TextSpec | None = None,
) -> ModelSpec:
    if text is None and text_models is not None:
        text = TextSpec(mode="frozen", encoder="unused", hidden_size=E, models=text_models)
    return ModelSpec(
        label=LabelSpec(kind="classification", classes=classes) if classes else LabelSpec(kind="regression"),
        text=text,
        image=ImageSpec(size=PIXELS, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)) if image else None,
        **{m: SequenceSpec(dim=DIMS[m], max_len=T) for m in sequences},
        heads=heads,
        params=PARAMS,
    )


def prefix(lengths: list[int], size: int) -> Tensor:
    return torch.arange(size) < torch.tensor(lengths).unsqueeze(-1)


def make_batch(seed: int = 0) -> dict[str, Tensor]:
    """Every modality, padded as the featurize stage does: texts of 12/7/4/3 tokens ([CLS] and [SEP] included, so
    the shorter ones leave HAN empty sentences), all images present, sequences of 7/3/1/0 frames (the last absent)."""
    g = torch.Generator().manual_seed(seed)
    text_lengths = [L, 7, 4, 3]
    attention = prefix(text_lengths, L)
    sentence_index = torch.zeros(B, S, W, dtype=torch.int64)
    sentence_mask = torch.zeros(B, S, W, dtype=torch.bool)
    for i, n in enumerate(text_lengths):
        for j, position in enumerate(range(1, n - 1)):  # word tokens only
            if j // W < S:
                sentence_index[i, j // W, j % W] = position
                sentence_mask[i, j // W, j % W] = True
    batch = {
        "text.input_ids": torch.randint(1, 100, (B, L), generator=g).masked_fill(~attention, 0),
        "text.attention_mask": attention,
        "text.sentence_index": sentence_index,
        "text.sentence_mask": sentence_mask,
        "text.states": torch.randn(B, L, E, generator=g).masked_fill(~attention.unsqueeze(-1), 0).half(),
        "image.pixels": torch.randint(0, 256, (B, 3, PIXELS, PIXELS), generator=g, dtype=torch.uint8),
        "image.present": torch.ones(B, dtype=torch.bool),
        "label": torch.randn(B, generator=g),
    }
    frames = [T, 3, 1, 0]
    for m, dim in DIMS.items():
        mask = prefix(frames, T)
        batch[f"{m}.features"] = torch.randn(B, T, dim, generator=g).masked_fill(~mask.unsqueeze(-1), 0)
        batch[f"{m}.mask"] = mask
        batch[f"{m}.present"] = torch.tensor(frames) > 0
    return batch


def build(spec: ModelSpec, seed: int = 0, **kwargs: bool) -> MultiTaskModel:
    torch.manual_seed(seed)
    return MultiTaskModel(spec, **kwargs)


def assert_outputs(outputs: dict[str, Tensor], spec: ModelSpec) -> None:
    assert set(outputs) == set(spec.heads)
    shape = (B,) if spec.label.kind == "regression" else (B, len(spec.label.classes))
    for head, out in outputs.items():
        assert out.shape == shape, head
        assert out.is_floating_point() and torch.isfinite(out).all(), head


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Models this small gain nothing from threads, and OpenMP threads on a busy machine slow them ~50x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(config).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("classes", [(), ("neg", "neu", "pos")], ids=["regression", "classification"])
def test_full_multimodal_outputs_and_presence(classes):
    spec = make_spec(classes=classes)
    model, batch = build(spec), make_batch()
    assert_outputs(model(batch), spec)
    present = model.presence(batch)
    assert set(present) == set(spec.heads)
    assert present["han"].all() and present["image"].all() and present["fusion"].all()
    assert present["audio"].tolist() == [True, True, True, False]


@pytest.mark.parametrize(
    "spec",
    [
        make_spec(heads=("textcnn",), text_models=("textcnn",), image=False, sequences=()),
        make_spec(heads=("image",), text_models=None, sequences=()),
        make_spec(heads=("fusion",)),
        make_spec(heads=("fusion",), text_models=("han",), image=False, sequences=("vision",), classes=("a", "b")),
    ],
    ids=["text-only", "image-only", "fusion-only", "fusion-han-vision"],
)
def test_single_task_builds_only_what_it_needs(spec):
    model = build(spec)
    assert set(model.encoders) == set(spec.encoders)
    assert (model.fusion is not None) == ("fusion" in spec.heads)
    assert_outputs(model(make_batch()), spec)
    assert set(model.presence(make_batch())) == set(spec.heads)


def grow(x: Tensor, dims: tuple[int, ...], extra: int = 3) -> Tensor:
    """`x` with `extra` more zero (False) slots at the end of each of `dims`."""
    for d in dims:
        x = torch.cat([x, x.new_zeros(*x.shape[:d], extra, *x.shape[d + 1 :])], dim=d)
    return x


def test_padding_content_and_amount_do_not_change_any_output():
    model = build(make_spec()).eval()
    batch = make_batch()
    g = torch.Generator().manual_seed(1)
    noisy = dict(batch)
    real = grow(batch["text.attention_mask"], (1,))
    noise = 100 * torch.randn(*real.shape, E, generator=g)
    noisy["text.attention_mask"] = real
    noisy["text.input_ids"] = grow(batch["text.input_ids"], (1,))
    noisy["text.states"] = torch.where(real.unsqueeze(-1), grow(batch["text.states"], (1,)), noise)
    words = grow(batch["text.sentence_mask"], (1, 2))
    noise = torch.randint(0, L, words.shape, generator=g)
    noisy["text.sentence_mask"] = words
    noisy["text.sentence_index"] = torch.where(words, grow(batch["text.sentence_index"], (1, 2)), noise)
    for m, dim in DIMS.items():
        frames = grow(batch[f"{m}.mask"], (1,))
        noise = 100 * torch.randn(B, T + 3, dim, generator=g)
        noisy[f"{m}.mask"] = frames
        noisy[f"{m}.features"] = torch.where(frames.unsqueeze(-1), grow(batch[f"{m}.features"], (1,)), noise)
    with torch.no_grad():
        expected, actual = model(batch), model(noisy)
    for head in expected:
        torch.testing.assert_close(actual[head], expected[head], msg=head)


def test_absent_modality_cannot_change_fusion():
    model = build(make_spec()).eval()
    batch = make_batch()
    batch["image.present"][1] = False
    batch["image.pixels"][1] = 0
    noisy = {k: v.clone() for k, v in batch.items()}
    noisy["image.pixels"][1] = 255 - batch["image.pixels"][2]
    noisy["audio.mask"][3] = True  # an absent sample whose frames claim to be real
    noisy["audio.features"][3] = torch.nan
    with torch.no_grad():
        expected = model(batch)["fusion"]
        actual = model(noisy)["fusion"]
    torch.testing.assert_close(actual, expected)
    weights = model.fusion.last_weights["modality"]  # text, image, audio, vision
    assert weights[1, 1] == 0 and weights[3, 2] == 0 and weights[3, 3] == 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(B))


def test_masked_softmax_weighs_only_real_slots_and_empty_rows_get_none():
    scores = torch.tensor([[1.0, torch.nan, 3.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    weights = masked_softmax(scores, mask)
    expected = torch.zeros(3)
    expected[[0, 2]] = torch.tensor([1.0, 3.0]).softmax(-1)
    torch.testing.assert_close(weights[0], expected)
    assert torch.equal(weights[1], torch.zeros(3))


def test_textcnn_pools_only_windows_touching_a_real_token():
    cnn = TextCNN(2, 4, TextCNNParams(filter_sizes=(2,), feature_maps=1, dropout=0.0))
    with torch.no_grad():
        cnn.convs[0].weight.fill_(1.0)
        cnn.convs[0].bias.fill_(1.0)  # a window of zeros (padding) scores 1, any window with a real token 0
    states, mask = -torch.ones(1, 6, 2), torch.tensor([[True] * 4 + [False] * 2])
    with torch.no_grad():
        torch.testing.assert_close(cnn(states, mask), cnn(states[:, :4], mask[:, :4]))
        torch.testing.assert_close(cnn(states, mask), cnn.out(torch.zeros(1, 1)))


def test_mean_pool_averages_the_real_tokens_only_and_an_empty_text_reads_zeros():
    pool = MeanPool(2, 3)
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = torch.tensor([[False, True, True], [False, False, False]])  # real tokens anywhere, or none at all
    with torch.no_grad():
        expected = pool.out(torch.tensor([[51.5, 52.0], [0.0, 0.0]]))
        torch.testing.assert_close(pool(states, mask), expected)


def test_han_ignores_empty_sentences():
    torch.manual_seed(0)
    han = HAN(E, 8).eval()
    states = torch.randn(1, L, E)
    first, second = [1, 2, 3], [4, 5]
    dense_index = torch.tensor([[[*first, 0], [*second, 0, 0]]])
    dense_mask = torch.tensor([[[True] * 3 + [False], [True] * 2 + [False] * 2]])
    # the same two sentences with empty ones before, between and after them, their slots pointing anywhere
    sparse_index = torch.tensor([[[7, 8, 9, 10], [*first, 11], [6, 6, 6, 6], [*second, 9, 9], [3, 3, 3, 3]]])
    sparse_mask = torch.zeros(1, 5, W, dtype=torch.bool)
    sparse_mask[0, 1, :3] = sparse_mask[0, 3, :2] = True
    with torch.no_grad():
        torch.testing.assert_close(han(states, sparse_index, sparse_mask), han(states, dense_index, dense_mask))


def test_same_seed_same_weights_and_outputs():
    spec, batch = make_spec(), make_batch()
    a, b, other = build(spec).eval(), build(spec).eval(), build(spec, seed=1)
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, weights in a.state_dict().items():
        assert torch.equal(weights, b.state_dict()[name]), name
    assert not all(torch.equal(w, other.state_dict()[name]) for name, w in a.state_dict().items())
    with torch.no_grad():
        out_a, out_b = a(batch), b(batch)
    assert all(torch.equal(out_a[h], out_b[h]) for h in spec.heads)


def test_backward_reaches_every_parameter_deterministically(deterministic):
    model = build(make_spec(classes=("neg", "pos")))
    outputs = model(make_batch())
    sum(torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 1, 0])) for out in outputs.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.transformer_parameters() == []


def test_runs_under_bf16_autocast():
    spec = make_spec()
    model = build(spec)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(make_batch())
    assert_outputs(outputs, spec)
    sum(out.float().sum() for out in outputs.values()).backward()


def test_finetuned_transformer_loads_trains_and_rebuilds_without_weights(tiny_bert):
    from transformers import BertModel

    text = TextSpec(mode="finetune", encoder=tiny_bert, hidden_size=16, models=TEXT_MODELS)
    spec = make_spec(heads=(*TEXT_MODELS, "fusion"), image=False, sequences=(), text=text)
    batch = make_batch()
    del batch["text.states"]  # fine-tuning reads token ids, not precomputed states
    model = build(spec)
    saved = BertModel.from_pretrained(tiny_bert)
    torch.testing.assert_close(
        model.token_states.transformer.embeddings.word_embeddings.weight, saved.embeddings.word_embeddings.weight
    )
    outputs = model(batch)
    assert_outputs(outputs, spec)
    sum(out.sum() for out in outputs.values()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert len(model.transformer_parameters()) == len(list(model.token_states.transformer.parameters())) > 0

    rebuilt = build(spec, seed=1, pretrained=False)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        expected, actual = model(batch), rebuilt(batch)
    for head in spec.heads:
        torch.testing.assert_close(actual[head], expected[head])


def test_transformer_width_must_match_spec(tiny_bert):
    text = TextSpec(mode="finetune", encoder=tiny_bert, hidden_size=32, models=("lstm",))
    with pytest.raises(ValueError, match="hidden_size 16, but the spec says 32"):
        MultiTaskModel(make_spec(heads=("lstm",), image=False, sequences=(), text=text), pretrained=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": ("lstm", "image"), "image": False}, r"head 'image' has no encoder: spec.image is not set"),
        ({"heads": ("han",), "text_models": ("lstm",)}, r"head 'han' has no encoder: 'han' is not in spec.text.models"),
        ({"heads": ("lstm", "image"), "text_models": None}, r"head 'lstm' has no encoder: spec.text is not set"),
        ({"heads": ("lstm",), "text_models": ("lstm", "han"), "image": False}, r"\['han'\] feed no head"),
        ({"heads": ("fusion",), "text_models": None, "image": False}, "no encoder to fuse"),
        ({"heads": ()}, "spec.heads is empty"),
        ({"heads": ("fusion",), "text_models": ()}, "spec.text.models is empty"),
        ({"heads": ("fusion",), "classes": ("only",)}, "at least 2 classes"),
    ],
)
def test_inconsistent_spec_is_rejected_with_the_reason(kwargs, message):
    kwargs = {"sequences": (), **kwargs}
    with pytest.raises(ValueError, match=message):
        MultiTaskModel(make_spec(**kwargs))
