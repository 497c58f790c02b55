"""Generated sample data: deterministic, in the real raw formats, readable by the readers."""

import re
from pathlib import Path

import pytest

from lmforge.config import SampleData, load_params
from lmforge.data.conll import read_conll
from lmforge.data.sample import ADJECTIVES, sample_paths, write_sample_data
from lmforge.data.squad import read_squad
from lmforge.data.tabular import read_classification
from lmforge.data.text import read_corpus
from lmforge.errors import ConfigError
from support import REPO

SIZES = SampleData(
    classification_examples=400, ner_sentences=300, qa_examples=200, validation_fraction=0.25
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    return out, write_sample_data(out, SIZES, seed=7)


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes(sample, tmp_path):
    out, _ = sample
    write_sample_data(tmp_path, SIZES, seed=7)
    assert files(tmp_path) == files(out)


def test_other_seed_gives_other_data(sample, tmp_path):
    out, _ = sample
    write_sample_data(tmp_path, SIZES, seed=8)
    ours, theirs = files(out), files(tmp_path)
    assert ours.keys() == theirs.keys()
    assert all(ours[name] != theirs[name] for name in ours)


def test_raw_formats(sample):
    _, paths = sample
    assert Path(paths.classification.train).read_text().startswith("text,label\n")
    assert paths.classification.validation.endswith(".jsonl")
    assert re.match(r"\S+ (O|B-\w+)\n", Path(paths.ner.train).read_text())
    assert '"version": "1.1"' in Path(paths.qa.train).read_text()


def test_corpus_is_prose_with_held_out_paragraphs(sample):
    _, paths = sample
    train, validation = read_corpus(paths.corpus.train), read_corpus(paths.corpus.validation)
    assert len(train) > 500
    assert 0.03 < len(validation) / (len(train) + len(validation)) < 0.07
    assert not set(train) & set(validation)
    assert all(doc[0].isupper() and "::=" not in doc for doc in train)


def test_classification_sizes_and_balance(sample):
    _, paths = sample
    table = paths.classification
    train = read_classification(table.train, table.text_column, table.label_column)
    validation = read_classification(table.validation, table.text_column, table.label_column)
    assert (len(train), len(validation)) == (300, 100)
    assert {e.label for e in train} == {"positive", "negative"}
    assert sum(e.label == "positive" for e in train + validation) == 200
    assert not {e.text for e in train} & {e.text for e in validation}


def test_classification_words_alone_do_not_decide(sample):
    # Negation and contrast put praising words into negative reviews, and the reverse.
    _, paths = sample
    table = paths.classification
    examples = read_classification(table.train, table.text_column, table.label_column)
    praise = set(ADJECTIVES[True])
    words = [(set(re.findall(r"[a-z']+", e.text.lower())), e.label) for e in examples]
    assert any(ws & praise and label == "negative" for ws, label in words)
    assert any("not" in ws or "wasn't" in ws for ws, _ in words)
    assert any("but" in ws or "although" in ws for ws, _ in words)


def test_ner_sizes_tags_and_unseen_names(sample):
    _, paths = sample
    train, validation = read_conll(paths.ner.train), read_conll(paths.ner.validation)
    assert (len(train), len(validation)) == (225, 75)
    tags = {t for e in train for t in e.tags}
    assert tags == {"O"} | {f"{p}-{k}" for p in "BI" for k in ("PER", "LOC", "ORG", "MISC")}

    def person_tokens(examples):
        return {
            tok
            for e in examples
            for tok, tag in zip(e.tokens, e.tags, strict=True)
            if tag.endswith("PER")
        }

    unseen = person_tokens(validation) - person_tokens(train)
    assert unseen and person_tokens(validation) & person_tokens(train)


def test_qa_answers_are_located_and_questions_varied(sample):
    _, paths = sample
    # read_squad checks every answer against its offset in the context.
    train, validation = read_squad(paths.qa.train), read_squad(paths.qa.validation)
    assert (len(train), len(validation)) == (150, 50)
    assert not {e.context for e in train} & {e.context for e in validation}
    per_context = {}
    for e in train:
        per_context.setdefault(e.context, []).append(e)
    assert max(len(qs) for qs in per_context.values()) >= 3
    openings = {e.question.split()[0] for e in train}
    assert {"Who", "Where", "When", "What"} <= openings


def test_too_small_a_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.sample.qa_examples must be at least 2"):
        write_sample_data(tmp_path, SampleData(qa_examples=1), seed=0)


def test_paths_match_the_written_files(sample):
    out, written = sample
    assert sample_paths(out) == written


def test_committed_sample_data_is_what_params_generate(tmp_path):
    """data/sample is committed (source: sample reads it on a fresh clone); it must be
    exactly what the sample stage writes for params.yaml, or DVC would see a stale out."""
    params = load_params(REPO / "params.yaml")
    write_sample_data(tmp_path, params.data.sample, params.seed)
    assert files(REPO / "data" / "sample") == files(tmp_path)
    total = sum(len(b) for b in files(tmp_path).values())
    assert total < 1_000_000, f"sample data grew to {total} bytes; it is committed to git"
