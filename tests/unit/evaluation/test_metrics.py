"""components.evaluation.metrics: expected values are worked out by hand in the comments, not recomputed with
sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from components.evaluation.metrics import (
    classification_metrics,
    is_better,
    metrics_for,
    primary_metric,
    regression_metrics,
)

# Every test fails on any warning: zero division and constant inputs must be handled silently.
pytestmark = pytest.mark.filterwarnings("error")

PRED = [-1.2, 0.4, 2.6, -0.1, 0.0, 3.4]
LABEL = [-2.0, 0.0, 2.0, 0.6, -0.4, 3.0]


# ---------------------------------------------------------------------------------------------------------------------
# regression


def test_regression_worked_example() -> None:
    m = regression_metrics(PRED, LABEL)
    assert set(m) == {"acc2_has0", "f1_has0", "acc2", "f1", "acc5", "acc7", "mae", "corr"}
    assert all(type(v) is float for v in m.values())

    # Has0 (all 6 samples), x >= 0:
    #   pred  [F, T, T, F, T, T]
    #   label [F, T, T, T, F, T]   -> equal at 0, 1, 2, 5: 4/6
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    #   class T (support 4: idx 1,2,3,5): predicted T at 1,2,4,5, hits 1,2,5 -> P = 3/4, R = 3/4, F1 = 3/4
    #   class F (support 2: idx 0,4):     predicted F at 0,3,     hit  0     -> P = 1/2, R = 1/2, F1 = 1/2
    #   weighted = (4 * 3/4 + 2 * 1/2) / 6 = 4/6
    assert m["f1_has0"] == pytest.approx(4 / 6)

    # Non0: drop idx 1 (label 0.0); pred > 0 vs label > 0 on idx 0, 2, 3, 4, 5:
    #   pred  [F, T, F, F, T]   (idx 4: pred 0.0 is not > 0, so it counts as negative)
    #   label [F, T, T, F, T]   -> equal at idx 0, 2, 4, 5: 4/5
    assert m["acc2"] == pytest.approx(0.8)
    #   class T (support 3): predicted T at 2,5, both hits -> P = 1, R = 2/3, F1 = 2*(2/3)/(5/3) = 4/5
    #   class F (support 2): predicted F at 0,3,4, hits 0,4 -> P = 2/3, R = 1, F1 = 4/5
    #   weighted = (3 * 4/5 + 2 * 4/5) / 5 = 4/5
    assert m["f1"] == pytest.approx(0.8)

    # acc7: clip to [-3, 3], round
    #   pred  [-1.2, 0.4, 2.6, -0.1, 0.0, 3.4->3.0] -> [-1, 0, 3, 0, 0, 3]
    #   label [-2.0, 0.0, 2.0,  0.6, -0.4, 3.0]     -> [-2, 0, 2, 1, 0, 3]   equal at 1, 4, 5: 3/6
    assert m["acc7"] == pytest.approx(0.5)
    # acc5: clip to [-2, 2], round
    #   pred  [-1.2, 0.4, 2.6->2, -0.1, 0.0, 3.4->2] -> [-1, 0, 2, 0, 0, 2]
    #   label [-2.0, 0.0, 2.0, 0.6, -0.4, 3.0->2]    -> [-2, 0, 2, 1, 0, 2]   equal at 1, 2, 4, 5: 4/6
    assert m["acc5"] == pytest.approx(4 / 6)
    # mae: |0.8| + |0.4| + |0.6| + |-0.7| + |0.4| + |0.4| = 3.3; 3.3 / 6 = 0.55
    assert m["mae"] == pytest.approx(0.55)
    assert -1.0 <= m["corr"] <= 1.0


def test_weighted_f1_differs_from_accuracy() -> None:
    # label [1, 2, 3, -1], pred [1, 2, -1, -2]; positive = T:
    #   label [T, T, T, F], pred [T, T, F, F]  -> accuracy 3/4 (no zero labels, so Has0 == Non0)
    #   class T (support 3): predicted T at 0,1, both hits -> P = 1, R = 2/3, F1 = 2*(2/3)/(5/3) = 4/5
    #   class F (support 1): predicted F at 2,3, hit 3      -> P = 1/2, R = 1, F1 = 2*(1/2)/(3/2) = 2/3
    #   weighted = (3 * 4/5 + 1 * 2/3) / 4 = (12/5 + 2/3) / 4 = (46/15) / 4 = 23/30   (macro would be 11/15)
    m = regression_metrics([1.0, 2.0, -1.0, -2.0], [1.0, 2.0, 3.0, -1.0])
    assert m["acc2_has0"] == m["acc2"] == pytest.approx(0.75)
    assert m["f1_has0"] == m["f1"] == pytest.approx(23 / 30)


@pytest.mark.parametrize("case", ["random", "all positive", "perfect", "all wrong", "one class predicted"])
def test_binary_scores_equal_sklearn_bit_for_bit(case: str) -> None:
    # The one comparison with sklearn: MMSA's Acc-2 / F1 are sklearn's numbers, which components.evaluation.metrics
    # computes in numpy (sklearn's per-call checks cost more than the training step they score); they must not move
    # a bit.
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(len(case))
    for n in (1, 2, 7, 150, 301):
        label = rng.normal(size=n)
        pred = {
            "random": rng.normal(size=n),
            "all positive": np.abs(rng.normal(size=n)) + 0.1,
            "perfect": label,
            "all wrong": -label,
            "one class predicted": np.full(n, -1.0),
        }[case]
        label = np.abs(label) if case == "all positive" else label
        m = regression_metrics(pred, label)
        for key, p, y in (("has0", pred >= 0, label >= 0), ("", pred > 0, label > 0)):
            suffix = f"_{key}" if key else ""
            assert m[f"acc2{suffix}"] == float(accuracy_score(y, p))
            assert m[f"f1{suffix}"] == float(f1_score(y, p, average="weighted", zero_division=0.0))


def test_pearson_by_hand() -> None:
    # pred [1, 2, 3] -> deviations [-1, 0, 1]; label [2, 4, 7] (mean 13/3) -> deviations [-7/3, -1/3, 8/3]
    # cov sum = 7/3 + 0 + 8/3 = 5; sum dp^2 = 2; sum dl^2 = (49 + 1 + 64)/9 = 114/9
    # r = 5 / sqrt(2 * 114/9) = 15 / sqrt(228)
    assert regression_metrics([1, 2, 3], [2, 4, 7])["corr"] == pytest.approx(15 / math.sqrt(228))
    assert regression_metrics([1, 2, 3], [-2, -4, -6])["corr"] == pytest.approx(-1.0)


def test_pearson_constant_is_zero_not_nan() -> None:
    assert regression_metrics([0.7, 0.7, 0.7], [1.0, -2.0, 0.5])["corr"] == 0.0  # constant pred
    assert regression_metrics([1.0, -2.0, 0.5], [1.0, 1.0, 1.0])["corr"] == 0.0  # constant label
    assert regression_metrics([0.3], [1.0])["corr"] == 0.0  # one sample


def test_rounding_is_half_to_even_like_mmsa() -> None:
    # np.round: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2. pred [0.5, 1.5, 2.5] rounds to [0, 2, 2] == label [0, 2, 2].
    m = regression_metrics([0.5, 1.5, 2.5], [0.0, 2.0, 2.0])
    assert m["acc7"] == 1.0
    assert m["acc5"] == 1.0


def test_all_zero_labels_make_non0_metrics_nan() -> None:
    # Has0: label >= 0 is all T; pred >= 0 is [T, F, T] -> 2/3. Non0 has no sample left.
    m = regression_metrics([0.5, -1.0, 0.0], [0.0, 0.0, 0.0])
    assert math.isnan(m["acc2"]) and math.isnan(m["f1"])
    assert m["acc2_has0"] == pytest.approx(2 / 3)
    assert m["mae"] == pytest.approx(0.5)  # (0.5 + 1.0 + 0.0) / 3


def test_accepts_column_vectors_and_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    expected = regression_metrics(PRED, LABEL)
    assert regression_metrics(np.array(PRED)[:, None], np.array(LABEL)) == expected
    pred = torch.tensor(PRED, requires_grad=True)
    assert regression_metrics(pred.unsqueeze(1), torch.tensor(LABEL)) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------------------------------
# classification

CLASSES = ["neg", "neu", "pos"]
# "neu" (1) is never predicted.
C_LABEL = [0, 0, 0, 1, 1, 2]
C_PRED = [0, 0, 2, 0, 2, 2]


def test_classification_worked_example() -> None:
    m = classification_metrics(C_PRED, C_LABEL, CLASSES)
    # rows = true class, columns = predicted class
    #   true neg (idx 0,1,2): predicted 0, 0, 2 -> [2, 0, 1]
    #   true neu (idx 3,4):   predicted 0, 2    -> [1, 0, 1]
    #   true pos (idx 5):     predicted 2       -> [0, 0, 1]
    assert m["confusion_matrix"] == [[2, 0, 1], [1, 0, 1], [0, 0, 1]]
    # neg: predicted at 0,1,3 (hits 0,1) -> P = 2/3, R = 2/3, F1 = 2/3
    # neu: never predicted -> P = 0/0 := 0, R = 0/2 = 0, F1 = 0
    # pos: predicted at 2,4,5 (hit 5)    -> P = 1/3, R = 1, F1 = 2*(1/3)/(4/3) = 1/2
    pc = m["per_class"]
    assert list(pc) == CLASSES
    assert pc["neg"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert pc["neu"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert pc["pos"] == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1})
    assert type(pc["neg"]["support"]) is int
    # accuracy: hits at 0, 1, 5 -> 3/6
    assert m["accuracy"] == pytest.approx(0.5)
    # macro = (2/3 + 0 + 1/2) / 3 = 7/18; weighted = (3 * 2/3 + 2 * 0 + 1 * 1/2) / 6 = 5/12
    assert m["f1_macro"] == pytest.approx(7 / 18)
    assert m["f1_weighted"] == pytest.approx(5 / 12)
    assert all(type(m[k]) is float for k in ("accuracy", "f1_macro", "f1_weighted"))


def test_logits_equal_indices() -> None:
    one_hot_ish = np.full((6, 3), -1.0)
    one_hot_ish[np.arange(6), C_PRED] = 2.5
    probs = np.exp(one_hot_ish) / np.exp(one_hot_ish).sum(axis=1, keepdims=True)
    expected = classification_metrics(C_PRED, C_LABEL, CLASSES)
    assert classification_metrics(one_hot_ish, C_LABEL, CLASSES) == expected
    assert classification_metrics(probs.tolist(), np.array(C_LABEL, dtype=float), CLASSES) == expected


def test_logits_as_torch_tensor() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.zeros(6, 3, requires_grad=True) + torch.nn.functional.one_hot(torch.tensor(C_PRED), 3)
    expected = classification_metrics(C_PRED, C_LABEL, CLASSES)
    assert classification_metrics(logits, torch.tensor(C_LABEL), CLASSES) == expected
    assert classification_metrics(logits.to(torch.bfloat16), torch.tensor(C_LABEL), CLASSES) == expected


def test_absent_class_keeps_its_row() -> None:
    m = classification_metrics(C_PRED, C_LABEL, [*CLASSES, "other"])
    assert m["confusion_matrix"] == [[2, 0, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class"]["other"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # a class absent from label and pred is not averaged into f1_macro (sklearn's default)
    assert m["f1_macro"] == pytest.approx(7 / 18)


# ---------------------------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_empty_input(kind: str) -> None:
    with pytest.raises(ValueError, match=r"^no samples to evaluate$"):
        metrics_for(kind, [], [], CLASSES)


def test_empty_logits() -> None:
    with pytest.raises(ValueError, match=r"^no samples to evaluate$"):
        classification_metrics(np.zeros((0, 3)), [], CLASSES)


@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_mismatched_lengths(kind: str) -> None:
    with pytest.raises(ValueError, match=r"5 predictions, 4 labels"):
        metrics_for(kind, [0, 1, 2, 0, 1], [0, 1, 2, 0], CLASSES)


def test_mismatched_logits_rows() -> None:
    with pytest.raises(ValueError, match=r"2 predictions, 3 labels"):
        classification_metrics(np.zeros((2, 3)), [0, 1, 2], CLASSES)


def test_non_finite_predictions() -> None:
    with pytest.raises(ValueError, match=r"^2 of 3 predictions are not finite"):
        regression_metrics([np.nan, 0.1, np.inf], [0.0, 1.0, 2.0])
    logits = np.zeros((3, 3))
    logits[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"^1 of 9 predictions are not finite"):
        classification_metrics(logits, [0, 1, 2], CLASSES)
    with pytest.raises(ValueError, match=r"^1 of 3 labels are not finite"):
        regression_metrics([0.0, 1.0, 2.0], [0.0, np.nan, 2.0])


def test_bad_class_indices() -> None:
    with pytest.raises(ValueError, match=r"outside the class range 0..2"):
        classification_metrics([0, 3, 1], [0, 1, 2], CLASSES)
    with pytest.raises(ValueError, match="labels are outside"):
        classification_metrics([0, 1, 2], [0, -1, 2], CLASSES)
    with pytest.raises(ValueError, match="whole numbers"):
        classification_metrics([0, 1.5, 2], [0, 1, 2], CLASSES)
    with pytest.raises(ValueError, match=r"scores \[N, 3\]"):
        classification_metrics(np.zeros((3, 2)), [0, 1, 2], CLASSES)
    with pytest.raises(ValueError, match="at least one class"):
        classification_metrics([0], [0], [])
    with pytest.raises(ValueError, match="unique"):
        classification_metrics([0], [0], ["a", "a"])


def test_regression_rejects_matrix() -> None:
    with pytest.raises(ValueError, match=r"\[N\] or \[N, 1\]"):
        regression_metrics(np.zeros((3, 2)), np.zeros(3))


# ---------------------------------------------------------------------------------------------------------------------
# dispatch and model selection


def test_metrics_for_dispatches() -> None:
    assert metrics_for("regression", PRED, LABEL) == regression_metrics(PRED, LABEL)
    assert metrics_for("classification", C_PRED, C_LABEL, CLASSES) == classification_metrics(C_PRED, C_LABEL, CLASSES)
    with pytest.raises(ValueError, match="unknown task kind"):
        metrics_for("ranking", PRED, LABEL)  # type: ignore[arg-type]


def test_primary_metric() -> None:
    assert primary_metric("regression") == ("mae", "min")
    assert primary_metric("classification") == ("f1_weighted", "max")
    # the primary key is one that metrics_for returns
    assert primary_metric("regression")[0] in metrics_for("regression", PRED, LABEL)
    assert primary_metric("classification")[0] in metrics_for("classification", C_PRED, C_LABEL, CLASSES)


def test_is_better() -> None:
    assert is_better("regression", 0.5, None)
    assert is_better("regression", 0.5, 0.6)
    assert not is_better("regression", 0.6, 0.5)
    assert not is_better("regression", 0.5, 0.5)  # a tie keeps the earlier model
    assert is_better("classification", 0.7, 0.6)
    assert not is_better("classification", 0.6, 0.7)
    assert is_better("classification", {"f1_weighted": 0.7, "accuracy": 0.1}, {"f1_weighted": 0.6, "accuracy": 0.9})
    assert not is_better("regression", math.nan, None)
    assert is_better("regression", 0.9, math.nan)
    with pytest.raises(KeyError, match="mae"):
        is_better("regression", {"f1": 0.5}, None)
