from __future__ import annotations

import pytest
import torch

from hardbatch.data import PairDataset
from hardbatch.errors import DataError


def _toy(**kwargs) -> PairDataset:
    return PairDataset(
        ["q zero", "q one", "q two"],
        ["p zero", "p one", "p two"],
        kwargs.pop("negatives", [["n0a", "n0b"], ["n1a"], []]),
        kwargs.pop("ids", ["a", "b", "c"]),
        kwargs.pop("sources", ["s1", "s1", "s2"]),
        name="toy",
        **kwargs,
    )


def test_getitem_len_and_auto_ids():
    ds = PairDataset(["q a", "q b"], ["p a", "p b"])
    assert len(ds) == 2
    assert ds.ids == ["row-0", "row-1"]
    assert ds[1] == {"query": "q b", "positive": "p b", "id": "row-1"}
    assert ds.negatives is None and ds.sources is None
    full = _toy()
    assert full[0] == {
        "query": "q zero",
        "positive": "p zero",
        "negatives": ["n0a", "n0b"],
        "id": "a",
        "source": "s1",
    }
    assert full[torch.tensor(2)]["id"] == "c"  # sampler indices may be tensors / numpy ints


def test_is_a_torch_dataset_usable_by_dataloader():
    loader = torch.utils.data.DataLoader(_toy(negatives=None), batch_size=2, shuffle=False)
    batch = next(iter(loader))
    assert batch["query"] == ["q zero", "q one"]
    assert batch["id"] == ["a", "b"]


def test_fingerprint_depends_on_content_not_name():
    a, b = _toy(), _toy()
    b.name = "other"
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    changed = _toy(ids=["a", "b", "d"])
    assert changed.fingerprint != a.fingerprint
    no_neg = _toy(negatives=None)
    assert no_neg.fingerprint != a.fingerprint
    # length-prefixed: moving text between a query and a positive changes the hash
    assert PairDataset(["ab c"], ["d"]).fingerprint != PairDataset(["ab"], ["c d"]).fingerprint


def test_subset_and_drop_duplicates():
    ds = PairDataset(["q", "q", "r"], ["p", "p", "p"], ids=["x", "y", "z"])
    sub = ds.subset([2, 0])
    assert sub.ids == ["z", "x"] and sub.queries == ["r", "q"]
    assert ds.duplicate_pair_rows() == [1]
    assert ds.drop_duplicates().ids == ["x", "z"]
    with pytest.raises(IndexError):
        ds.subset([3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"queries": ["ok q", 5]}, "toy: row 1: field 'query' must be a string"),
        ({"positives": ["p", "  "]}, "toy: row 1: field 'positive' is empty"),
        ({"negatives": [["n"], [""]]}, "toy: row 1: field 'negatives[0]' is empty"),
        ({"ids": ["same", "same"]}, "toy: row 1: field 'id': duplicate id 'same' (first seen in row 0)"),
        ({"positives": ["p"]}, "toy: mismatched column lengths: queries=2, positives=1"),
        ({"sources": ["s", None]}, "toy: row 1: field 'source' must be a string"),
    ],
)
def test_constructor_validation(kwargs, message):
    args = {"queries": ["q a", "q b"], "positives": ["p a", "p b"], **kwargs}
    with pytest.raises(DataError) as info:
        PairDataset(**args, name="toy")
    assert message in str(info.value)


def test_empty_dataset_rejected():
    with pytest.raises(DataError, match="toy: empty dataset"):
        PairDataset([], [], name="toy")


def test_to_hf_columns_and_negative_handling():
    pytest.importorskip("datasets")
    ds = PairDataset(["q a", "q b"], ["p a", "p b"], [["n1", "n2"], ["m1", "m2", "m3"]], sources=["x", "y"])
    with pytest.warns(UserWarning, match="keeping the first 2"):
        hf = ds.to_hf()
    assert hf.column_names == ["query", "positive", "negative_1", "negative_2"]
    assert hf[1] == {"query": "q b", "positive": "p b", "negative_1": "m1", "negative_2": "m2"}
    assert ds.to_hf(num_negatives=1, extra_columns=True).column_names == [
        "query",
        "positive",
        "negative_1",
        "id",
        "source",
    ]
    with pytest.raises(DataError, match="row 0: field 'negatives' has 2 entries, fewer than num_negatives=3"):
        ds.to_hf(num_negatives=3)
    assert PairDataset(["q"], ["p"]).to_hf().column_names == ["query", "positive"]


def test_save_rejects_unknown_extension(tmp_path):
    with pytest.raises(DataError, match=r"out\.txt: unsupported extension"):
        _toy().save(tmp_path / "out.txt")
