"""Request and response bodies of the HTTP API, with the examples /docs shows.

Shapes and emptiness are checked here; size limits come from Settings and the routes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _readable_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a JSON "\ud800" escape decodes to a lone surrogate
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_readable_text)]


class _Request(BaseModel):
    # A misspelt field ("text" for "texts") is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class TextsRequest(_Request):
    texts: list[Text] = Field(min_length=1, description="One or more non-empty texts.")


class QaItem(_Request):
    question: Text
    context: Text = Field(description="Read in overlapping windows when longer than the model's.")


class QaRequest(_Request):
    """Either one `question` + `context`, or a list of them under `items`."""

    question: Text | None = None
    context: Text | None = None
    items: list[QaItem] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> QaRequest:
        single = self.question is not None or self.context is not None
        if single == (self.items is not None):
            raise ValueError("give either question and context, or items, not both")
        if single and (self.question is None or self.context is None):
            raise ValueError("question and context go together")
        return self

    def pairs(self) -> list[QaItem]:
        if self.items is not None:
            return self.items
        return [QaItem(question=self.question, context=self.context)]


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Softmax probability of the label.")


class Entity(BaseModel):
    text: str = Field(description="Equals the input text[start:end].")
    label: str = Field(description="Entity type (the BIO tag without B-/I-).")
    start: int = Field(description="Character offset of the first character.")
    end: int = Field(description="Character offset one past the last character.")
    score: float = Field(description="Mean tag probability over the entity's words.")


class Entities(BaseModel):
    entities: list[Entity]


class Answer(BaseModel):
    answer: str = Field(description="Equals context[start:end]; empty when no span was found.")
    start: int
    end: int
    score: float = Field(description="Start times end probability within its window.")


def _example(value: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


class GenerateRequest(_Request):
    """A prompt to continue. Types are strict: `"max_new_tokens": "5"` is an error."""

    prompt: Annotated[str, AfterValidator(_unicode)] = Field(
        description="Text to continue; may be empty (the model starts a new document)."
    )
    max_new_tokens: int = Field(
        64, ge=1, strict=True, description="At most this many tokens (limit: /docs)."
    )
    temperature: float = Field(
        1.0, ge=0, le=100, strict=True, description="0 = greedy (always the likeliest token)."
    )
    top_p: float = Field(
        1.0, gt=0, le=1, strict=True, description="Nucleus: sample from the likeliest tokens "
        "whose probabilities add up to top_p.",
    )  # fmt: skip
    seed: int | None = Field(
        None, ge=0, lt=2**63, strict=True, description="The same seed gives the same text."
    )
    stop: list[Annotated[str, Field(min_length=1), AfterValidator(_unicode)]] = Field(
        default_factory=list,
        max_length=8,
        description="The text ends before the first of these strings (not included).",
    )
    stream: bool = Field(
        False, strict=True, description="Server-sent events, one per token, then a final one."
    )


class GenerateResponse(BaseModel):
    model_config = _example(
        {
            "text": " jumps over the lazy dog.",
            "prompt_tokens": 4,
            "completion_tokens": 7,
            "finish_reason": "stop",
        }
    )

    text: str
    prompt_tokens: int = Field(description="Tokens of the prompt.")
    completion_tokens: int = Field(description="Tokens generated, <|endoftext|> included.")
    finish_reason: str = Field(
        description="stop (end of text or a stop string), length (max_new_tokens), cancelled "
        "(the client went away: nobody reads it)."
    )


class ClassifyResponse(BaseModel):
    model_config = _example({"results": [{"label": "positive", "score": 0.93}]})

    results: list[Prediction]


class NerResponse(BaseModel):
    model_config = _example(
        {
            "results": [
                {
                    "entities": [
                        {"text": "John Kim", "label": "PER", "start": 0, "end": 8, "score": 0.97},
                        {
                            "text": "Ada Lovelace",
                            "label": "PER",
                            "start": 13,
                            "end": 25,
                            "score": 0.95,
                        },
                        {"text": "Sri Lanka", "label": "LOC", "start": 29, "end": 38, "score": 0.9},
                    ]
                }
            ]
        }
    )

    results: list[Entities]


class QaResponse(BaseModel):
    model_config = _example(
        {"results": [{"answer": "marine biology", "start": 47, "end": 61, "score": 0.81}]}
    )

    results: list[Answer]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")  # task-specific extras, e.g. QA's doc_stride

    task: str
    labels: list[str]
    quantized: bool
    version: str
    model_file: str
    max_seq_len: int


class Health(BaseModel):
    status: str = "ok"


class TaskStatus(BaseModel):
    status: str = Field(description="ready, loading or failed.")
    reason: str | None = Field(None, description="Why a failed model is not served.")


class Readiness(BaseModel):
    status: str = Field(description="ready, loading, unavailable or draining.")
    models: dict[str, TaskStatus]


class ErrorDetail(BaseModel):
    loc: str = Field(description="Where in the body, e.g. texts.2")
    message: str


class Error(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. too_many_items.")
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    model_config = _example(
        {
            "error": {
                "code": "too_many_items",
                "message": "texts has 40 items; the limit is 32 per request (max_items)",
            }
        }
    )

    error: Error


GENERATE_EXAMPLES = {
    "greedy": {
        "summary": "Greedy",
        "value": {"prompt": "The quick brown fox", "max_new_tokens": 16, "temperature": 0},
    },
    "sampled": {
        "summary": "Sampled, seeded, with a stop string, streamed",
        "value": {
            "prompt": "Once upon a time",
            "max_new_tokens": 64,
            "temperature": 0.8,
            "top_p": 0.95,
            "seed": 7,
            "stop": ["\n\n"],
            "stream": True,
        },
    },
}
CLASSIFY_EXAMPLES = {
    "one": {"summary": "One text", "value": {"texts": ["The battery lasts all day."]}},
    "several": {
        "summary": "Several texts",
        "value": {"texts": ["Frankly, the food felt awful.", "The dessert wasn't messy at all."]},
    },
}
NER_EXAMPLES = {
    "one": {"summary": "One text", "value": {"texts": ["John Kim met Ada Lovelace in Sri Lanka."]}},
}
QA_EXAMPLES = {
    "single": {
        "summary": "One question",
        "value": {
            "question": "What did Ingrid Lopez teach?",
            "context": "Ingrid Lopez moved to Ockford, where he taught marine biology for 27 years.",
        },
    },
    "items": {
        "summary": "Several questions",
        "value": {
            "items": [
                {"question": "Where was Ada born?", "context": "Ada was born in London in 1815."},
                {"question": "When was Ada born?", "context": "Ada was born in London in 1815."},
            ]
        },
    },
}
