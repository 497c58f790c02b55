"""Task registry: classification, NER, QA and generation share one interface (see base.py)."""
