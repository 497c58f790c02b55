"""The prepared corpus on disk: one Parquet file per split, one document per row.

Written and read in bounded batches, so a corpus never has to fit in memory; any Parquet
reader opens it (`datasets.load_dataset("parquet", data_files=...)`, pandas, DuckDB).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COLUMN = "text"
# Text per row group: the unit written at once by `prepare` and read at once by `tokenize`.
ROW_GROUP_BYTES = 16 << 20
BATCH_DOCUMENTS = 2048  # documents per batch handed to the tokenizer
_SCHEMA = pa.schema([(COLUMN, pa.large_string())])


def write_corpus(path: Path, documents: Iterable[str]) -> dict:
    """Write documents as they come, a row group at a time; returns their count and bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = size = 0
    group: list[str] = []
    group_size = 0
    # No dictionary encoding: documents rarely repeat, and plain pages keep the row groups'
    # recorded sizes equal to the text's, which `sample_documents` relies on.
    with pq.ParquetWriter(path, _SCHEMA, compression="zstd", use_dictionary=False) as writer:
        for doc in documents:
            group.append(doc)
            group_size += len(doc)
            if group_size >= ROW_GROUP_BYTES:
                writer.write_table(pa.table({COLUMN: group}, schema=_SCHEMA))
                count, size, group, group_size = count + len(group), size + group_size, [], 0
        if group:
            writer.write_table(pa.table({COLUMN: group}, schema=_SCHEMA))
            count, size = count + len(group), size + group_size
    return {"documents": count, "characters": size}


def corpus_documents(path: Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def corpus_batches(path: Path, batch_documents: int = BATCH_DOCUMENTS) -> Iterator[list[str]]:
    """The documents in file order, `batch_documents` at a time."""
    for batch in _record_batches(path, batch_documents):
        yield batch.column(0).to_pylist()


def _record_batches(path: Path, batch_documents: int) -> Iterator[pa.RecordBatch]:
    """A row group at a time. Not `ParquetFile.iter_batches`: measured with pyarrow 26 on
    this project's corpora, its peak RSS grows with the file (567 MB reading a 1 GB
    corpus, 173 MB for 100 MB), while reading row group by row group stays at 177 MB."""
    parquet = pq.ParquetFile(path)
    for index in range(parquet.metadata.num_row_groups):
        yield from parquet.read_row_group(index).to_batches(max_chunksize=batch_documents)


def sample_documents(path: Path, budget_bytes: int) -> Iterator[str]:
    """Every k-th document, k chosen so that about `budget_bytes` of text come out.

    Deterministic and spread over the whole corpus; k = 1 (everything) when the corpus
    is within the budget. The size is read from the file's metadata, not from the text.
    """
    meta = pq.ParquetFile(path).metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    stride = max(1, math.ceil(size / budget_bytes))
    index = 0
    for batch in _record_batches(path, BATCH_DOCUMENTS):
        first = -index % stride
        yield from (
            batch.column(0).take(pa.array(range(first, len(batch), stride), pa.int64())).to_pylist()
        )
        index += len(batch)
