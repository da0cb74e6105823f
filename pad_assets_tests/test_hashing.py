"""Content keys: their exact text, their NumPy handling and their refusals.

Written for the mutants that survived the first mutation run (README, Development): a key
format that drifts (another separator) silently orphans every cache; a NumPy parameter that
is refused (or stringified) breaks a researcher's pipeline or hides a difference.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pad_assets.hashing import array_digest, canonical_json, code_digest
from pad_assets.keys import chain_key, chain_keys, prediction_key, preprocessed_key, tensor_key


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_chain_keys_hash_exactly_this_text() -> None:
    """The key format is part of every cache ever written: pinned to its exact bytes."""
    assert canonical_json({"b": [1, 2.5], "a": None, "c": "é"}) == \
        '{"a":null,"b":[1,2.5],"c":"\\u00e9"}'
    assert chain_key("preprocessed", "abc", {"size": [454, 454], "name": "pad_nn"}) == _sha(
        '["preprocessed","abc",{"name":"pad_nn","size":[454,454]}]')
    assert preprocessed_key("r", "p") == _sha('["preprocessed","r","p"]')
    assert tensor_key("p", {"shape": [2]}) == _sha('["tensor","p",{"shape":[2]}]')
    assert prediction_key("t", "sig", {"drug": "x"}) == _sha(
        '["prediction","t","sig",{"drug":"x"}]')
    firsts = ["k1", "k2", "k\u00e9"]
    rest = ({"shape": [454, 454, 3], "dtype": "uint8"}, "v2")
    assert chain_keys("tensor", firsts, *rest) == [chain_key("tensor", f, *rest) for f in firsts]
    assert chain_keys("raw", ["x"]) == [chain_key("raw", "x")] == [_sha('["raw","x"]')]


def test_numpy_parameters_key_like_python_ones() -> None:
    plain = {"n": 3, "w": 0.5, "box": [1, 2, 3], "flag": True}
    numpyish = {"n": np.int64(3), "w": np.float32(0.5), "box": np.arange(1, 4),
                "flag": np.bool_(True)}
    assert canonical_json(numpyish) == canonical_json(plain)
    assert chain_key("p", numpyish) == chain_key("p", plain)


def test_a_parameter_json_cannot_express_is_refused_by_type() -> None:
    with pytest.raises(TypeError) as exc:
        canonical_json({"labels": {"a", "b"}})
    assert str(exc.value) == ("cannot make a cache key from a parameter of type set: "
                              "expected JSON-like values (str, int, float, bool, None, "
                              "list, dict)")
    with pytest.raises(TypeError, match="of type object"):
        chain_key("p", object())


def test_array_digest_covers_dtype_shape_and_bytes() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    want = hashlib.sha256(b"|u1|(3, 4)|" + a.tobytes()).hexdigest()
    assert array_digest(a) == want
    assert array_digest(np.asfortranarray(a)) == want  # C order whatever the layout
    assert array_digest(a.reshape(4, 3)) != want
    assert array_digest(a.astype(np.int8)) != want


def test_code_digest_ignores_words_not_code() -> None:
    src = 'def f(x):\n    """Doc."""\n    return x + 1  # one\n'
    assert code_digest(src) == code_digest("def f(x):\n    return x + 1\n")
    assert code_digest(src) != code_digest("def f(x):\n    return x + 2\n")
    only_doc = 'def g():\n    """Only a docstring."""\n'
    assert code_digest(only_doc) == code_digest("def g():\n    pass\n")
