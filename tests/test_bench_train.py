"""`pegasus bench train`: the plain tutorial VQ-VAE beside pegasus's, fp32 beside bf16 (figures
live in benchmarks/results and docs/benchmarks.md, never in asserts); the benches' one table builder."""
from __future__ import annotations

import json

import pytest
import torch

from pegasus.bench import train
from pegasus.bench.harness import markdown_table
from pegasus.cli import main
from pegasus.models.vqvae import VQVAEConfig


def test_records_and_ratios():
    records = train.run(steps=1, vqvae_batch=2, prior_batch=2)
    assert [(r.op, r.model, r.precision) for r in records] == [
        ("vqvae", "plain", "fp32"), ("vqvae", "pegasus", "fp32"), ("vqvae", "pegasus", "bf16"),
        ("prior", "pegasus", "fp32"), ("prior", "pegasus", "bf16"),
    ]
    assert records[0].speedup_vs_plain_fp32 == 1.0 and records[1].speedup_vs_fp32 == 1.0
    assert all(r.median_s > 0 and r.items_per_s > 0 for r in records)
    assert "| vqvae | pegasus | bf16 | 2 |" in train.format_table(records)


def test_plain_quantizer_is_the_nearest_code_with_ema():
    torch.manual_seed(0)
    q = train.PlainQuantizer(codes=6, dim=3)
    z = torch.randn(2, 3, 2, 2)
    before = q.embedding.clone()
    out, loss = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = torch.cdist(flat, before).argmin(1)
    assert torch.allclose(out.permute(0, 2, 3, 1).reshape(-1, 3), before[nearest])
    assert not torch.equal(q.embedding, before) and loss > 0  # the EMA moved the used codes
    assert train.PlainVQVAE(VQVAEConfig(codes=8, dim=4, hidden=8, res_hidden=4))(torch.rand(1, 3, 8, 8))[0].shape == (1, 3, 8, 8)


def test_cli_writes_records(tmp_path, capsys, monkeypatch):
    real = train.run
    monkeypatch.setattr(train, "run", lambda **kw: real(**{**kw, "steps": 1, "vqvae_batch": 2, "prior_batch": 2}))
    assert main(["bench", "train", "--quick", "--json", str(tmp_path / "t.jsonl")]) == 0
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[2])["precision"] == "bf16"
    assert "| step | model | precision |" in capsys.readouterr().out



def test_markdown_table_is_the_one_table_builder():
    table = markdown_table([("name", "<"), ("ms", ">")], [("cpu", 1.5), ("reference", "")])
    assert table.splitlines() == ["| name | ms |", "| --- | ---: |", "| cpu | 1.5 |", "| reference |  |"]
    with pytest.raises(ValueError, match=r"column 'ms': align should be '<' or '>', got '\^'"):
        markdown_table([("ms", "^")], [])
    with pytest.raises(ValueError, match=r"a row should have 2 cells \(the columns\), got 1: \('cpu',\)"):
        markdown_table([("name", "<"), ("ms", ">")], [("cpu",)])
