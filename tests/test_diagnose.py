"""Diagnosis statistics against hand computations, and the diagnose command on a tiny ladder."""

import json
import math

import pytest
import torch

from rayrejuv.method.metrics import mean_squared_drift, pass_at_k, pooled_abs_delta, relative_drift
from rayrejuv.method.rewards import extract_answer, is_correct


def test_pass_at_k_against_hand_counts():
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_drift_statistics_are_direct_tensor_arithmetic():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(30, 20, generator=g).to(torch.bfloat16)
    sft = (base.float() + 0.1 * torch.randn(30, 20, generator=g)).to(torch.bfloat16)
    d = sft.double() - base.double()
    assert mean_squared_drift(sft, base) == pytest.approx(float((d**2).sum() / d.numel()), rel=1e-12)
    assert relative_drift(sft, base) == pytest.approx(float(d.norm() / base.double().norm()), rel=1e-12)
    pooled = pooled_abs_delta(sft, base, size=8)
    assert pooled.shape == (8, 7)  # ceil(30/8)=4 rows per cell -> 8 cells; ceil(20/8)=3 cols -> 7 cells
    assert float(pooled.max()) == pytest.approx(float(d.abs().max()), rel=1e-6)
    assert float(pooled[0, 0]) == pytest.approx(float(d[:4, :3].abs().max()), rel=1e-6)


@pytest.mark.parametrize(
    "text,answer",
    [
        (" 3+4=7. 7-2=5. #### 5", "5"),
        ("so \\boxed{12} is it", "12"),
        ("#### 3 then #### 4.", "4"),
        ("no answer here", None),
        ("\\boxed{1", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_is_correct_numbers_and_malformed():
    assert is_correct("#### 17", "17") and is_correct("\\boxed{17.0}", "17")
    assert not is_correct("#### 18", "17") and not is_correct("####", "17") and not is_correct("", "17")
    assert is_correct("\\boxed{\\frac{1}{2}}", "0.5")


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    from test_testbed import small_config

    from rayrejuv.commands.testbed.driver import WorldLayout, build_testbed

    root = tmp_path_factory.mktemp("ladder") / "tb"
    build_testbed(small_config(root), progress=False)
    return WorldLayout(root)


def test_diagnose_writes_report_figures_and_json(ladder, tmp_path):
    from rayrejuv.commands.diagnose.config import DiagnoseConfig
    from rayrejuv.commands.diagnose.driver import diagnose

    cfg = DiagnoseConfig(
        base=ladder.base,
        sft=[ladder.sft(e) for e in (0.5, 1, 2)],
        data=ladder.data("eval_id"),
        out=tmp_path / "dg",
        max_examples=6,
        k=4,
        tracking={"enabled": False},
    )
    result = diagnose(cfg, progress=False)
    out = tmp_path / "dg"
    on_disk = json.loads((out / "diagnose.json").read_text())
    assert [r["checkpoint"] for r in on_disk["rows"]] == ["base", "epoch-0.5", "epoch-1", "epoch-2"]
    for r in on_disk["rows"]:
        assert {"sft_loss", "entropy", "pass_at_1", "pass_at_k", "pass_gap", "verdict"} <= set(r)
        assert 0 <= r["pass_at_1"] <= 1 and r["tokens"] > 0
    losses = [r["sft_loss"] for r in on_disk["rows"]]
    assert losses == sorted(losses, reverse=True)  # SFT lowers its own loss along the ladder
    drift = on_disk["drift"]["epoch-2"]
    from rayrejuv.io.checkpoint import Checkpoint

    b, s = Checkpoint(ladder.base), Checkpoint(ladder.sft(2))
    name = "model.layers.1.mlp.down_proj.weight"
    row = next(d for d in drift if d["name"] == name)
    assert row["msd"] == pytest.approx(mean_squared_drift(s.get(name), b.get(name)), rel=1e-12)
    assert row["layer"] == 1 and row["module"] == "down_proj"
    for f in ("drift_by_layer.png", "drift_heatmaps.png", "ladder.png"):
        assert (out / f).stat().st_size > 5000
    report = (out / "report.md").read_text()
    assert "| epoch-2 |" in report and "![ladder.png](ladder.png)" in report
    assert result.rows[0].checkpoint == "base" and result.to_json() == on_disk
    assert result.out == str(out.absolute())
    from rayrejuv.commands.diagnose.results import Diagnosis

    assert Diagnosis.from_json(on_disk, out=result.out) == result  # the demo reuses a diagnosis from disk


def test_diagnose_cli_refuses_mismatched_pair(ladder, tmp_path, make_pair):
    import subprocess
    import sys

    _, sft = make_pair("llama")
    r = subprocess.run(
        [sys.executable, "-m", "rayrejuv", "diagnose", "--base", str(ladder.base), "--sft", str(sft), "--no-track"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 2 and "base is Qwen3ForCausalLM but SFT is LlamaForCausalLM" in r.stderr


def test_verdicts_from_thresholds_and_json_leaves_out_what_was_not_measured():
    from rayrejuv.commands.diagnose.results import DiagnosisRow, Thresholds

    th = Thresholds(entropy=0.05, sft_loss=0.01, pass_gap=0.05)
    row = DiagnosisRow(checkpoint="e32", path="/p", sft_loss=0.009, entropy=0.049, pass_at_1=0.5, pass_at_k=0.56,
                       pass_gap=0.06)
    judged = row.judged(th)
    assert (judged.verdict, judged.symptoms) == ("rigid", ["entropy collapse", "SFT loss saturation"])
    assert row.judged(Thresholds(entropy=0.049, sft_loss=0.009, pass_gap=0.06)).verdict == "plastic"  # strict <
    gap = DiagnosisRow(checkpoint="g", path="/p", pass_at_1=0.5, pass_at_k=0.52, pass_gap=0.02).judged(th)
    assert (gap.verdict, gap.symptoms) == ("at risk", ["diversity collapse"])
    unsolved = DiagnosisRow(checkpoint="z", path="/p", sft_loss=0.5, entropy=0.4, pass_at_1=0.0, pass_at_k=0.0,
                            pass_gap=0.0).judged(th)
    assert (unsolved.verdict, unsolved.symptoms) == ("plastic", [])  # solving nothing is not a diversity collapse
    bare = DiagnosisRow(checkpoint="base", path="/b").judged(th)
    # nothing measured is not plastic (issue 14): the verdict says which values and data are missing
    assert bare.to_json() == {"checkpoint": "base", "path": "/b", "verdict": "undetermined", "symptoms": [],
                              "not_measured": ["entropy", "sft_loss", "pass_gap"], "missing": ["answer", "response"]}
    assert list(judged.to_json()) == ["checkpoint", "path", "sft_loss", "entropy", "pass_at_1", "pass_at_k",
                                      "pass_gap", "verdict", "symptoms"]
    assert judged.numbers() == {"sft_loss": 0.009, "entropy": 0.049, "pass_at_1": 0.5, "pass_at_k": 0.56,
                                "pass_gap": 0.06}
