"""Name -> Task. finetune, compress and serve loop over this instead of branching on names."""

from __future__ import annotations

from lmforge.tasks.base import Task
from lmforge.tasks.classification import ClassificationTask
from lmforge.tasks.generation import GenerationTask
from lmforge.tasks.ner import NerTask
from lmforge.tasks.qa import QaTask

# The encoder's tasks (model.arch bert): the service's batched routes, loaded by default.
TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), NerTask(), QaTask())}
# The decoder's (model.arch gpt2): text generation, decoded token by token, not batched.
DECODER_TASKS: dict[str, Task] = {t.name: t for t in (GenerationTask(),)}


def get_task(name: str) -> Task:
    known = TASKS | DECODER_TASKS
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; expected one of {', '.join(known)}") from None
