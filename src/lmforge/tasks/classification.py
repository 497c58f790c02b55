"""Text classification: one label per text; accuracy and macro-F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from lmforge.data.records import ClassificationExample
from lmforge.tasks.base import Features, Task, encode_batch, pad_id, softmax, to_arrays


class ClassificationTask(Task):
    name = "classification"
    metric_name = "accuracy"
    auto_model = "AutoModelForSequenceClassification"
    output_names = ("logits",)

    def label_list(self, train_examples: Sequence[ClassificationExample]) -> list[str]:
        return sorted({ex.label for ex in train_examples})

    def encode(self, tokenizer, examples, labels, *, max_seq_len: int, **_) -> Features:
        features = encode_texts(tokenizer, [ex.text for ex in examples], max_seq_len)
        index = {label: i for i, label in enumerate(labels)}
        features.targets["labels"] = np.array([index[ex.label] for ex in examples], np.int64)
        return features

    def evaluate(self, outputs, features, examples, labels, **_) -> dict[str, float]:
        from sklearn.metrics import accuracy_score, f1_score

        predicted = outputs["logits"].argmax(-1)
        gold = features.targets["labels"]
        return {
            "accuracy": float(accuracy_score(gold, predicted)),
            "f1_macro": float(
                f1_score(gold, predicted, average="macro", labels=list(range(len(labels))))
            ),
        }


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_seq_len: int) -> Features:
    encodings = encode_batch(tokenizer, texts, max_seq_len)
    return Features(inputs=to_arrays(encodings, pad_id(tokenizer)))


def classify(logits: np.ndarray, labels: list[str]) -> list[dict]:
    """Best label and its probability for each row of logits."""
    probs = softmax(logits)
    best = probs.argmax(-1)
    return [{"label": labels[i], "score": float(probs[r, i])} for r, i in enumerate(best)]
