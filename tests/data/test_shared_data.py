"""The readers on the real public data sets in ../shared/data (skipped where it is absent)."""

from pathlib import Path

import pytest

from lmforge.data.conll import read_conll
from lmforge.data.squad import read_squad
from lmforge.data.tabular import read_classification
from lmforge.data.text import read_corpus

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} not present")


def test_conll2003_counts():
    train = read_conll(SHARED / "conll2003" / "train.txt")
    assert len(train) == 14_041
    assert sum(len(e.tokens) for e in train) == 203_621
    assert len(read_conll(SHARED / "conll2003" / "valid.txt")) == 3_250
    tags = {t for e in train for t in e.tags}
    assert tags == {"O"} | {f"{p}-{k}" for p in "BI" for k in ("PER", "LOC", "ORG", "MISC")}


def test_sst2_counts_and_labels():
    train = read_classification(SHARED / "sst2" / "train.tsv", "sentence", "label")
    dev = read_classification(SHARED / "sst2" / "dev.tsv", "sentence", "label")
    assert (len(train), len(dev)) == (60_614, 6_735)
    assert {e.label for e in train} == {e.label for e in dev} == {"0", "1"}


def test_squad_counts():
    train = read_squad(SHARED / "squad-dev-split" / "train.json")
    validation = read_squad(SHARED / "squad-dev-split" / "validation.json")
    assert (len(train), len(validation)) == (7_235, 888)
    assert all(e.answer_texts for e in train + validation)
    assert max(len(e.answer_texts) for e in validation) > 1


@pytest.mark.parametrize("name", ["wiki.valid.tokens", "wiki.test.tokens"])
def test_wikitext_is_unescaped(name):
    docs = read_corpus(SHARED / "wikitext-2" / name)
    text = "\n".join(docs)
    assert len(text.split()) > 190_000
    assert not any(escape in text for escape in (" @-@ ", " @,@ ", " @.@ ", "\ufeff"))
    assert "<unk>" in text
    lines = [line for doc in docs for line in doc.split("\n")]
    assert not any(line.startswith("= ") and line.endswith(" =") for line in lines)
