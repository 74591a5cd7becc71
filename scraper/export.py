"""Export the corpus for use elsewhere: JSON Lines, or Parquet when pyarrow is installed."""

from __future__ import annotations

import json
from pathlib import Path

from model.atomic import atomic_write_bytes
from scraper.store import CorpusStore

FIELDS = ("repo", "path", "sha", "license", "stars", "commit", "content")


def export(store: CorpusStore, out: Path, include_near_dups: bool = False) -> int:
    """Write one record per unique file to `out` (atomically); returns the count."""
    rows = [{"repo": f.repo, "path": f.path, "sha": f.sha, "license": f.license,
             "stars": f.stars, "commit": f.commit_sha, "content": f.content}
            for f in store.iter_files(include_near_dups)]
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise SystemExit(f"writing {out} needs pyarrow (pip install pyarrow); "
                             "or export to a .jsonl file.") from None
        table = pa.Table.from_pylist(rows)
        tmp = out.with_name(out.name + ".tmp")
        pq.write_table(table, tmp)
        tmp.replace(out)
    else:
        atomic_write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                        for r in rows).encode("utf-8"))
    return len(rows)
