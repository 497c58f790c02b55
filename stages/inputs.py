"""Stage inputs@<part>: fingerprint one entry of data.local (its train and validation files).

DVC runs one per entry of params.yaml's `data.local`, with that entry's files as deps, so an
edit in place re-runs it, and its fingerprint, a dep of prepare, then re-runs prepare. An
entry left out of data.local (an omitted corpus) simply has no stage: a path templated
straight into prepare's deps could not be absent.
"""

import argparse
from pathlib import Path

from lmforge.artifacts import sha256_file, write_json
from lmforge.errors import DataError
from lmforge.stage import log, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fingerprint = {}
    for path in args.files:
        if not path.is_file():
            raise DataError(path, "not found (a path in params.yaml's data.local)")
        fingerprint[str(path)] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    write_json(args.out, fingerprint)
    log.info("fingerprinted %s", ", ".join(fingerprint))


if __name__ == "__main__":
    run_stage(main)
