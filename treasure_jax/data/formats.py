"""`treasure-jax data convert`: annotated JSONL to ArrayRecord or Parquet for the Grain pipeline.

Every line is checked as training will read it (`preprocessors.parse_record`: JSON, prompt or
messages, response, markers inside the taxonomy) so a bad record is named by `file:line` now,
not hours into a run. The output holds the records' JSON text unchanged (ArrayRecord: one UTF-8
record each; Parquet: a `record` column), which `grain_pipeline` reads. TF-free.
"""
from __future__ import annotations

import codecs
import os
from typing import Any

from treasure_jax.data import preprocessors
from treasure_jax.markers import taxonomy as taxonomy_lib

FORMATS = (".arrayrecord", ".parquet")


def convert(in_path: str, out_path: str, *, tax: taxonomy_lib.Taxonomy | None = None,
            skip_invalid: bool = False) -> dict[str, Any]:
  """Writes `out_path` (kind by extension); returns {"written", "skipped", "bad": [...]}.

  A bad record raises `preprocessors.RecordError` ("file:line: reason") unless
  `skip_invalid`, which leaves it out and lists it in "bad".
  """
  kind = os.path.splitext(out_path)[1]
  if kind not in FORMATS:
    raise ValueError(f"{out_path}: the output must end with {' or '.join(FORMATS)}")
  tax = tax or taxonomy_lib.default_taxonomy()
  records, bad = [], []
  with open(in_path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]  # A byte-order mark (Windows editors) is not data.
      if not raw.strip():
        continue
      try:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise preprocessors.RecordError(f"{in_path}:{line_no}", "invalid_utf8",
                                          f"invalid UTF-8 at byte {e.start}") from None
        preprocessors.parse_record(line, f"{in_path}:{line_no}", tax)
      except preprocessors.RecordError as e:
        if not skip_invalid:
          raise
        bad.append(str(e))
        continue
      records.append(line.strip())
  if not records and not bad:
    raise ValueError(f"{in_path}: no records: the file is empty")
  if kind == ".parquet":
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    pq.write_table(pa.table({"record": pa.array(records, pa.string())}), out_path)
  else:
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    writer = array_record_module.ArrayRecordWriter(out_path, "group_size:1")
    for record in records:
      writer.write(record.encode("utf-8"))
    writer.close()
  return {"written": len(records), "skipped": len(bad), "bad": bad}
