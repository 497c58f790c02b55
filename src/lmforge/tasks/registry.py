"""Name -> Task. finetune, compress and serve loop over this instead of branching on names."""

from __future__ import annotations

from lmforge.tasks.base import Task
from lmforge.tasks.classification import ClassificationTask
from lmforge.tasks.generation import GenerationTask
from lmforge.tasks.ner import NerTask
from lmforge.tasks.qa import QaTask

# The encoder's tasks (model.arch bert), then the decoder's (gpt2): lmforge.config.TASKS.
TASKS: dict[str, Task] = {
    t.name: t for t in (ClassificationTask(), NerTask(), QaTask(), GenerationTask())
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
