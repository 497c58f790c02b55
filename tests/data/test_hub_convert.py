"""Hub conversions, on local `datasets.Dataset`s shaped like the hub's (no network)."""

import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value

from lmforge.config import HubData, HubDataset
from lmforge.data.hub import (
    classification_from_hub,
    corpus_from_hub,
    hub_source,
    load_hub,
    ner_from_hub,
    qa_from_hub,
)
from lmforge.data.records import ClassificationExample, NerExample, QaExample
from lmforge.errors import DataError

CONLL_NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def wikitext():
    rows = [
        "",
        " = Title = \n",
        "",
        " A well @-@ known road . \n",
        " More text . \n",
        "",
        " = = Part = = \n",
        "",
        " End . \n",
    ]
    return Dataset.from_dict({"text": rows})


def sst2(labels=(1, 0)):
    features = Features(
        {"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])}
    )
    sentences = ["a gripping film ", "dull"][: len(labels)]
    return Dataset.from_dict({"sentence": sentences, "label": list(labels)}, features=features)


def conll(tags):
    features = Features(
        {"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=CONLL_NAMES))}
    )
    tokens = [[f"w{i}" for i in range(len(t))] for t in tags]
    return Dataset.from_dict({"tokens": tokens, "ner_tags": tags}, features=features)


def squad(start=9):
    return Dataset.from_dict(
        {
            "id": ["q1"],
            "question": ["Who?"],
            "context": ["Found by Ada in 1815."],
            "answers": [{"text": ["Ada"], "answer_start": [start]}],
        }
    )


def test_corpus_rows_become_documents():
    assert corpus_from_hub(wikitext(), "text", "hf:w") == [
        "A well-known road .\nMore text .",
        "End .",
    ]


def test_classification_labels_use_class_names():
    assert classification_from_hub(sst2(), "sentence", "label", "hf:s") == [
        ClassificationExample("a gripping film", "positive"),
        ClassificationExample("dull", "negative"),
    ]


def test_classification_plain_labels_become_strings():
    rows = Dataset.from_dict({"text": ["x", "y"], "label": [3, 7]})
    assert [e.label for e in classification_from_hub(rows, "text", "label", "hf:s")] == ["3", "7"]


def test_unlabelled_split_is_an_error():
    with pytest.raises(DataError, match="hf:s: row 0: label -1 is not a class id"):
        classification_from_hub(sst2(labels=(-1,)), "sentence", "label", "hf:s")


def test_missing_column_names_the_columns_found():
    with pytest.raises(DataError, match=r"no column 'text' \(columns found: sentence, label\)"):
        classification_from_hub(sst2(), "text", "label", "hf:s")


def test_ner_tag_ids_become_iob2_names():
    rows = conll([[2, 2, 0, 5], [0]])  # IOB1: I-PER I-PER O B-LOC
    assert ner_from_hub(rows, "hf:c") == [
        NerExample(["w0", "w1", "w2", "w3"], ["B-PER", "I-PER", "O", "B-LOC"]),
        NerExample(["w0"], ["O"]),
    ]


def test_ner_string_tags_are_kept():
    rows = Dataset.from_dict({"tokens": [["Oslo"]], "ner_tags": [["I-LOC"]]})
    assert ner_from_hub(rows, "hf:c") == [NerExample(["Oslo"], ["B-LOC"])]


def test_ner_length_mismatch():
    rows = Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [["O"]]})
    with pytest.raises(DataError, match="row 0: 2 tokens but 1 tags"):
        ner_from_hub(rows, "hf:c")


def test_qa_rows():
    assert qa_from_hub(squad(), "hf:q") == [
        QaExample("q1", "Who?", "Found by Ada in 1815.", ["Ada"], [9])
    ]


def test_qa_answer_not_at_its_start():
    with pytest.raises(
        DataError, match=r"row 0 \(question 'q1'\): answer text 'Ada' .* found 'by ' there"
    ):
        qa_from_hub(squad(start=6), "hf:q")


def test_load_hub_builds_every_task_and_split():
    specs = HubData(
        corpus=HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1"),
        classification=HubDataset("nyu-mll/glue", "sst2", text_column="sentence"),
        ner=HubDataset("eriktks/conll2003", validation_split="test"),
        qa=HubDataset("rajpurkar/squad"),
    )
    tables = {
        "Salesforce/wikitext": wikitext(),
        "nyu-mll/glue": sst2(),
        "eriktks/conll2003": conll([[1, 2]]),
        "rajpurkar/squad": squad(),
    }
    calls = []

    def load(name, config, split):
        calls.append((name, config, split))
        return tables[name]

    data = load_hub(specs, load=load)
    assert ("eriktks/conll2003", None, "test") in calls
    assert len(calls) == 8
    assert {task: sorted(splits) for task, splits in data.items()} == {
        task: ["train", "validation"] for task in ("corpus", "classification", "ner", "qa")
    }
    assert data["ner"]["validation"] == [NerExample(["w0", "w1"], ["B-PER", "I-PER"])]
    assert hub_source(specs.classification, "validation") == "hf:nyu-mll/glue/sst2[validation]"
    assert hub_source(specs.ner, "validation") == "hf:eriktks/conll2003[test]"
