"""Task registry: classification, NER and QA share one interface (see base.py)."""
