"""Data readers (plain text, CSV/TSV/JSONL, CoNLL, SQuAD, hub), sample data, and prepare."""
