"""Label agreement (spr_plugin/scoring/labels.py): name rules, synonyms, and the real MiniLM for the rest."""

import numpy as np
import pytest

from spr_plugin.core.errors import ConfigError
from spr_plugin.core.records import AnnotatedObject, Box
from spr_plugin.scoring.labels import LabelMatcher, category_names, names_agree, normalize_label
from spr_plugin.scoring.semantic import TextSemanticScorer


def obj(category, synonyms=()):
    return AnnotatedObject(1, category, Box(0, 0, 10, 10), tuple(synonyms))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Red Circles", "red circle"),
        ("bat_(animal)", "bat"),
        ("the glasses", "glass"),
        ("a Band_Aid", "band aid"),
        ("  berries ", "berry"),
        ("", ""),
    ],
)
def test_normalize_label(raw, normal):
    assert normalize_label(raw) == normal


def test_category_names_split_objects365_slashes_and_keep_lvis_synonyms():
    assert category_names(obj("Cabinet/shelf")) == ("cabinet shelf", "cabinet", "shelf")
    assert category_names(obj("aerosol_can", ["aerosol_can", "spray_can"])) == ("aerosol can", "spray can")


@pytest.mark.parametrize(
    ("phrase", "name", "agree"),
    [
        ("red circle", "red circle", True),
        ("the small red circle", "red circle", True),  # more words around every word of the name
        ("a black dog", "dog", True),
        ("the car on the left", "car", True),
        ("table", "dining table", True),  # a shorter form that keeps the head noun
        ("circle", "red circle", True),
        ("red", "red circle", False),  # no head noun: left to the text model
        ("blue triangle", "red circle", False),
        ("red square", "red circle", False),
        ("person riding a horse", "horse", False),  # the head part is "person"
        ("horse ridden by a person", "horse", True),
    ],
)
def test_name_rules(phrase, name, agree):
    assert names_agree(normalize_label(phrase), [normalize_label(name)]) is agree


@pytest.fixture(scope="module")
def minilm():
    return TextSemanticScorer.load()


def test_matcher_uses_the_text_model_only_for_open_pairs_and_is_strict(minilm):
    objects = [obj("red circle"), obj("sofa"), obj("handbag", ["purse"])]
    labels = ["red circle", "couch", "blue circle", "purse", "", "unicorn"]
    (agree,) = LabelMatcher(minilm.embed).agreement([(objects, labels)])
    assert agree.shape == (3, 6)
    assert agree[0, 0] and not agree[1:, 0].any()
    assert agree[1, 1]  # couch ~ sofa by the text model (0.86 >= 0.8)
    assert not agree[:, 2].any()  # "blue circle" is not the red circle (0.74 < 0.8)
    assert agree[2, 3]  # LVIS-style synonym
    assert agree[:, 4].all()  # a bare box agrees with every object: IoU alone decides
    assert not agree[:, 5].any()
    (rules_only,) = LabelMatcher().agreement([(objects, labels)])
    assert not rules_only[1, 1]  # without a text model only the name rules decide


def test_matcher_batches_many_items_in_one_call(minilm):
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return minilm.embed(texts)

    items = [([obj("dog"), obj("cat")], ["puppy", "kitten", "dog"]), ([obj("car")], ["vehicle"])]
    out = LabelMatcher(embed).agreement(items)
    assert len(calls) == 1
    assert [a.shape for a in out] == [(2, 3), (1, 1)]
    assert out[0][0, 2] and not out[0][1, 2]
    assert np.array_equal(out[1], np.array([[True]]))  # car ~ vehicle (0.87)


def test_threshold_must_be_a_cosine():
    with pytest.raises(ConfigError):
        LabelMatcher(threshold=1.5)
