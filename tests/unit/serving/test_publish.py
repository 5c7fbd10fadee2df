"""The served model's input signature (components.serving.publish.model_signature) and the input contract registration
compares it by: frames typed Array(Array(double)) by older versions, `Any` by later ones and string now are one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Schema

from components.registry.versions import _contract
from components.serving.publish import model_signature

SPEC = SimpleNamespace(text=object(), image=object(), audio=object(), vision=object())


def inputs(frames_type) -> list[dict]:
    columns = [ColSpec(DataType.string, "text"), ColSpec(DataType.string, "image", required=False)]
    columns += [ColSpec(DataType.string, "image_base64", required=False)]
    columns += [ColSpec(frames_type, m, required=False) for m in ("audio", "vision")]
    return Schema(columns).to_dict()


def test_frames_are_optional_strings_that_csv_can_carry() -> None:
    signature = model_signature(SPEC)
    explain = {"type": "string", "name": "explain", "required": False}
    assert signature.inputs.to_dict() == [*inputs(DataType.string), explain]
    signature.inputs.pandas_types()  # what MLflow's CSV parser asks for; `Any` has none and raised


def test_a_row_that_leaves_explain_out_does_not_ask_through_mlflow_s_parser() -> None:
    from mlflow.models.utils import _enforce_schema
    from mlflow.utils.proto_json_utils import dataframe_from_parsed_json

    from components.serving.predictor import _asks

    schema = model_signature(SPEC).inputs
    records = [{"text": "a", "explain": True}, {"text": "b"}, {"text": "c", "explain": False}, {"text": "d"}]
    records[3]["explain"] = "true"  # as CSV carries it
    parsed = _enforce_schema(dataframe_from_parsed_json(records, "records", schema=schema), schema)
    assert [_asks(v) for v in parsed["explain"]] == [True, False, False, True]


def test_a_version_that_takes_explain_shares_the_contract_of_one_that_does_not() -> None:
    # registered before explanations: the same requests reach both, so a new version may follow it under its name
    assert _contract(inputs(DataType.string)) == _contract(model_signature(SPEC).inputs.to_dict())
    assert [c["name"] for c in model_signature(SPEC).outputs.to_dict()] == [
        "score",
        "class",
        "modality_shares",
        "top_words",
    ]


@pytest.mark.parametrize("older", [Array(Array(DataType.double)), AnyType()], ids=["array", "any"])
def test_frames_typed_by_older_versions_are_the_same_contract(older) -> None:
    assert _contract(inputs(older)) == _contract(model_signature(SPEC).inputs.to_dict())


def test_other_differences_are_still_a_different_contract() -> None:
    ours = _contract(inputs(DataType.string))
    required = [{**c, "required": True} if c["name"] == "audio" else c for c in inputs(DataType.string)]
    assert _contract(required) != ours
    assert _contract([c for c in inputs(DataType.string) if c["name"] != "vision"]) != ours
    as_text = [{**c, "type": "double"} if c["name"] == "audio" else c for c in inputs(DataType.string)]
    assert _contract(as_text) != ours
    renamed = [{**c, "name": "frames"} if c["name"] == "audio" else c for c in inputs(Array(DataType.double))]
    assert _contract(renamed) != ours
