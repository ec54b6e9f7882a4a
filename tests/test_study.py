"""The architecture study's runner (scripts/study.py) as a smoke run: two variants, a few
seconds each, on character-level Tiny Shakespeare. The full study is run by hand (minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import study

ROOT = Path(__file__).resolve().parent.parent


def test_quick_study_writes_records_a_plot_and_a_table(shared_data: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "results", tmp_path / "curves.png"
    env = {**os.environ, "LLMFS_DATA": str(shared_data), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "scripts/study.py", "--quick", "--only", "gpt2,llama", "--data", "char",
         "--out", str(out), "--plot", str(png), "--work", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    records = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(records) == {"gpt2-char", "llama-char"}
    gpt2, llama = records["gpt2-char"], records["llama-char"]
    assert (gpt2["arch"], llama["arch"]) == ("gpt2", "llama")
    assert gpt2["parameters"] == 804_096 and abs(llama["parameters"] - gpt2["parameters"]) < 200
    for r in records.values():
        assert r["kind"] == "study" and r["quick"] is True and r["steps"] >= 5
        assert 0 < r["val_loss"] < 5 and r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["curve"] and r["curve"][-1]["step"] == r["steps"]
        assert {"machine", "date", "budget_s", "train_seconds"} <= set(r)
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "| gpt2 | char | adamw | 804,096 |" in done.stdout


def test_study_refuses_unknown_variants() -> None:
    with pytest.raises(SystemExit) as info:
        study.main(["--only", "gpt3"])
    assert info.value.code == 2


def test_every_variant_is_a_valid_config(tmp_path: Path) -> None:
    from reference.trainer.config import load_config

    for name, (config, _) in study.VARIANTS.items():
        for data in study.DATA:
            cfg = load_config(ROOT / "configs" / config, study.overrides(name, data, tmp_path))
            assert cfg.data.tokenizer == ("char" if data == "char" else "gpt2"), name


def test_llama_variants_match_gpt2_parameters_on_both_tokenizations(tmp_path: Path) -> None:
    """Equal parameters: the untied Llama head stands for GPT-2's position table on characters;
    on 50,257 BPE ids the Llama variants tie it (else they would be twice the size)."""
    from reference.trainer.config import load_config

    for data in study.DATA:
        tied = {name: load_config(ROOT / "configs" / config, study.overrides(name, data, tmp_path)
                                  ).model.tie_word_embeddings
                for name, (config, _) in study.VARIANTS.items()
                if config not in (study.NANOGPT, study.FAST)}
        assert set(tied.values()) == {data == "bpe"}, (data, tied)


def test_the_readme_study_commands_name_real_variants() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- study-commands -->")[1].split("<!-- /study-commands -->")[0]
    runs = [line.split("#")[0].split() for line in block.splitlines() if "study.py" in line]
    assert runs, "README.md's study-commands block runs no study"
    for argv in runs:
        args = argv[argv.index("scripts/study.py") + 1:]
        for flag, known in (("--only", study.VARIANTS), ("--data", study.DATA)):
            if flag in args:
                names = args[args.index(flag) + 1].split(",")
                assert set(names) <= set(known), f"README: {flag} {names} not in {list(known)}"
