from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrec.data.vocab import SMALL_ENCODE, Vocab
from cmrec.errors import DataValidationError


def test_fit_reserves_padding_and_oov() -> None:
    vocab = Vocab.fit(pd.Series([7, 3, 7, 9]), name="item")
    assert len(vocab) == 5
    assert vocab.ids == ("7", "3", "9")
    np.testing.assert_array_equal(vocab.encode([3, 7, 9, 1234]), [3, 2, 4, 1])
    np.testing.assert_array_equal(vocab.decode([4, 2]), [9, 7])
    assert vocab.decode([4]).dtype == np.int64


def test_integer_and_text_spellings_of_an_id_agree() -> None:
    vocab = Vocab.fit(pd.Series([7, 3]), name="item")
    np.testing.assert_array_equal(vocab.encode(pd.Series(["3", "7", "8"])), [3, 2, 1])


def test_string_ids_round_trip_through_a_file(tmp_path: Path) -> None:
    vocab = Vocab.fit(pd.Series(["Toy Story (1995)", "Heat (1995)"]), name="item")
    vocab.save(tmp_path / "v.json")
    loaded = Vocab.load(tmp_path / "v.json")
    assert loaded == vocab
    np.testing.assert_array_equal(loaded.encode(["Heat (1995)", "Alien (1979)"]), [3, 1])
    assert loaded.decode([2]).tolist() == ["Toy Story (1995)"]


def test_errors() -> None:
    with pytest.raises(DataValidationError, match="appears twice"):
        Vocab(name="item", ids=("1", "1"))
    vocab = Vocab.fit([1, 2], name="item")
    with pytest.raises(DataValidationError, match="0 is padding and 1 is the OOV bucket"):
        vocab.decode([0])
    with pytest.raises(DataValidationError, match="not a saved vocabulary"):
        Vocab.from_dict({"name": "x"})


def test_encode_empty() -> None:
    assert Vocab.fit([1], name="item").encode([]).shape == (0,)


@settings(max_examples=60, deadline=None)
@given(
    known=st.lists(st.integers(-50, 50), min_size=1, max_size=30, unique=True),
    asked=st.lists(st.integers(-60, 60), min_size=0, max_size=40),
)
def test_small_requests_encode_as_the_vectorised_path_does(known: list[int], asked: list[int]) -> None:
    """The dict lookup for small inputs (`SMALL_ENCODE`) gives the vectorised path's indices, for
    ints, numpy ints, floats, their text spellings and unknown ids."""
    for vocab in (Vocab.fit(known, "item"), Vocab.fit([str(k) for k in known], "item")):
        spellings = (
            asked,
            np.asarray(asked, dtype=np.int64),
            [str(a) for a in asked],
            pd.Series(asked, dtype=np.int64),
            pd.Series([float(a) for a in asked], dtype=np.float64),
        )
        for values in spellings:
            large = list(values) * (SMALL_ENCODE // max(len(asked), 1) + 1)  # past the small path
            vectorised = vocab.encode(pd.Series(large)).reshape(-1)[: len(asked)] if asked else np.zeros(0)
            np.testing.assert_array_equal(vocab.encode(values), vectorised.astype(np.int64))
