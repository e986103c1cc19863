"""Tests of markers.stats and `treasure-jax markers stats`."""
import json
import subprocess
import sys

import pytest

from treasure_jax import cli
from treasure_jax.markers import stats, taxonomy

TAX = taxonomy.default_taxonomy()


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def _records():
  out = [{"markers": {"domain": "Conversation", "lang": "English", "length_tokens": 5}}] * 90
  out += [{"markers": {"domain": "Medical", "lang": "Hindi", "length_tokens": 40}}] * 6
  out += [{"markers": {"domain": "Legal", "quality_bucket": 2}}] * 4
  return out


def test_counts_shares_and_long_tail_flags():
  table = stats.frequency_table(_records(), TAX)
  assert table.total == 100
  assert table.counts["domain"]["Conversation"] == 90
  assert table.share("domain", "Medical") == 0.06
  assert not table.is_long_tail("domain", "Medical")
  assert table.is_long_tail("domain", "Legal")
  assert table.is_long_tail("domain", "Finance")  # Never seen: share 0.
  assert "Conversation" in table.head_values("domain")
  assert table.counts["quality_bucket"][2] == 4
  assert table.numeric["length_tokens"] == {"count": 96, "min": 5.0, "median": 5.0, "max": 40.0}
  assert stats.from_dict(json.loads(json.dumps(table.to_dict())), TAX).counts == table.counts


def test_values_outside_taxonomy_are_counted_as_problems():
  table = stats.frequency_table([{"markers": {"domain": "Cooking"}}, {"markers": {"x": 1}}], TAX)
  assert sum(table.problems.values()) == 2


def test_read_jsonl_reports_bad_lines_with_line_numbers(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(b'{"a": 1}\n\n[1, 2]\n{"b": \n\xff\xfe\n{"c": 3}\n')
  with pytest.raises(stats.JsonlError, match=r"bad.jsonl:3: expected a JSON object, got list"):
    list(stats.read_jsonl(path))
  rejects = []
  good = list(stats.read_jsonl(path, skip_invalid=True, rejects=rejects))
  assert good == [(1, {"a": 1}), (6, {"c": 3})]
  assert [r[0] for r in rejects] == [3, 4, 5]
  assert "invalid UTF-8" in rejects[2][1]


def test_cli_prints_table_and_json(tmp_path, capsys):
  path = _write(tmp_path / "d.jsonl", _records())
  assert cli.main(["markers", "stats", str(path)]) == 0
  out = capsys.readouterr().out
  assert "100 examples" in out
  assert any(line.split()[:2] == ["Legal", "4"] and line.endswith("tail")
             for line in out.splitlines())
  assert cli.main(["markers", "stats", str(path), "--json"]) == 0
  data = json.loads(capsys.readouterr().out)
  assert data["categorical"]["domain"]["Legal"] == {"count": 4, "share": 0.04, "long_tail": True}


def test_cli_malformed_line_names_file_and_line(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_text('{"markers": {}}\n{"markers": \n')
  proc = subprocess.run([sys.executable, "-m", "treasure_jax.cli", "markers", "stats", str(path)],
                        capture_output=True, text=True)
  assert proc.returncode == 2
  assert f"{path}:2: invalid JSON" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_help_lists_subcommands():
  proc = subprocess.run([sys.executable, "-m", "treasure_jax.cli", "--help"],
                        capture_output=True, text=True)
  assert proc.returncode == 0 and "markers" in proc.stdout
