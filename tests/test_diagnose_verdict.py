"""An honest diagnosis (issue 14 item 3), on hand-built rows: what was not measured is said, a
negative gap is not a collapse, the plots name the checkpoints and show zero drift."""

import numpy as np

from rayrejuv.commands.diagnose.report import (
    NOT_MEASURED,
    drift_figure,
    findings,
    ladder_figure,
    markdown_report,
    print_diagnose_summary,
    zero_drift_layers,
)
from rayrejuv.commands.diagnose.results import Diagnosis, DiagnosisRow, DriftRow, Thresholds

TH = Thresholds(entropy=0.05, sft_loss=0.01, pass_gap=0.05)


def _diagnosis(rows: list[DiagnosisRow], drift=None) -> Diagnosis:
    return Diagnosis({}, TH, [r.judged(TH) for r in rows], drift or {}, [], out="/o")


def test_without_responses_the_verdict_is_undetermined_and_says_what_is_missing():
    # the case: a model trained to loss 0.0014, eval rows with answers only
    row = DiagnosisRow(checkpoint="sft", path="/s", pass_at_1=0.4, pass_at_k=0.6, pass_gap=0.2).judged(TH)
    assert (row.verdict, row.symptoms) == ("undetermined", [])
    assert (row.not_measured, row.missing) == (["entropy", "sft_loss"], ["response"])
    assert row.explained() == "undetermined (entropy, sft_loss not measured: --data rows need 'response')"
    j = row.to_json()
    assert j["not_measured"] == ["entropy", "sft_loss"] and j["missing"] == ["response"]
    assert "sft_loss" not in j and "entropy" not in j  # still left out, not written as 0 or null
    assert DiagnosisRow(**j) == row  # from_json round trip keeps the new keys


def test_with_responses_the_same_checkpoint_is_judged():
    row = DiagnosisRow(checkpoint="sft", path="/s", sft_loss=0.0014, entropy=0.2, pass_at_1=0.4, pass_at_k=0.6,
                       pass_gap=0.2).judged(TH)  # fmt: skip
    assert (row.verdict, row.symptoms, row.not_measured, row.missing) == ("at risk", ["SFT loss saturation"], [], [])
    assert row.explained() == "at risk (SFT loss saturation)"
    assert {"not_measured", "missing", "notes"}.isdisjoint(row.to_json())  # the old format where nothing is missing
    plastic = DiagnosisRow(checkpoint="p", path="/p", sft_loss=0.3, entropy=0.2, pass_at_1=0.4, pass_at_k=0.6,
                           pass_gap=0.2).judged(TH)  # fmt: skip
    assert plastic.verdict == "plastic" and plastic.explained() == "plastic"


def test_a_symptom_found_is_kept_while_another_is_not_measured():
    row = DiagnosisRow(checkpoint="s", path="/s", sft_loss=0.001, entropy=0.01).judged(TH)  # no answers
    assert (row.verdict, row.symptoms) == ("rigid", ["entropy collapse", "SFT loss saturation"])
    one = DiagnosisRow(checkpoint="s", path="/s", sft_loss=0.001, entropy=0.3).judged(TH)
    assert one.verdict == "at risk"
    assert one.explained() == "at risk (SFT loss saturation; pass_gap not measured: --data rows need 'answer')"


def test_a_negative_gap_is_reported_as_such_not_as_diversity_collapse():
    row = DiagnosisRow(checkpoint="s", path="/s", sft_loss=0.3, entropy=0.2, pass_at_1=0.5, pass_at_k=0.375,
                       pass_gap=-0.125).judged(TH)  # fmt: skip
    assert (row.verdict, row.symptoms) == ("plastic", [])
    assert row.notes == ["negative gap: pass@k 0.3750 < pass@1 0.5000 (sampled answers are worse than the greedy "
                         "one; not a diversity collapse)"]  # fmt: skip
    assert row.to_json()["notes"] == row.notes and row.to_json()["pass_gap"] == -0.125
    zero = DiagnosisRow(checkpoint="s", path="/s", sft_loss=0.3, entropy=0.2, pass_at_1=0.5, pass_at_k=0.5,
                        pass_gap=0.0).judged(TH)  # fmt: skip
    assert zero.symptoms == ["diversity collapse"] and zero.notes == []  # samples collapsed onto greedy: gap 0


def test_report_and_terminal_say_not_measured(capsys):
    d = _diagnosis([DiagnosisRow(checkpoint="base", path="/b", pass_at_1=0.1, pass_at_k=0.3, pass_gap=0.2),
                    DiagnosisRow(checkpoint="sft", path="/s", pass_at_1=0.5, pass_at_k=0.4, pass_gap=-0.1,
                                 drift_msd_mean=1e-5, drift_rel_max=0.01)])  # fmt: skip
    md = markdown_report(d)
    assert "| base | not measured | not measured | 0.1000 | 0.3000 | 0.2000 | - | - | undetermined |" in md
    assert "- **sft**: undetermined (entropy, sft_loss not measured: --data rows need 'response'); negative gap" in md
    assert "| plastic |" not in md
    assert findings(d)[0] == "base: undetermined (entropy, sft_loss not measured: --data rows need 'response')"
    print_diagnose_summary(d)
    out = capsys.readouterr().out
    assert out.count(NOT_MEASURED) >= 4 and "negative gap: pass@k 0.4000 < pass@1 0.5000" in out


def test_ladder_names_its_checkpoints_and_says_what_was_not_measured():
    rows = [DiagnosisRow(checkpoint=f"epoch-{e:g}", path="/", pass_at_1=p, pass_at_k=p + g, pass_gap=g).judged(TH)
            for e, p, g in ((0.5, 0.2, 0.3), (4, 0.5, -0.05), (32, 0.6, 0.01))]  # fmt: skip
    fig = ladder_figure(rows, [0.5, 4.0, 32.0], "SFT epochs", TH)
    loss, entropy, acc, gap = fig.axes[:4]
    for ax in (loss, entropy, acc, gap):
        assert [t.get_text() for t in ax.get_xticklabels()] == ["epoch-0.5", "epoch-4", "epoch-32"]
    for ax in (loss, entropy):
        assert [t.get_text() for t in ax.texts] == ["not measured\n(--data rows need 'response')"]
        assert not ax.lines
    assert not acc.texts and len(acc.lines) == 2
    (values,) = [ln for ln in gap.lines if len(ln.get_xdata()) == 3]
    assert list(values.get_ydata()) == [0.3, -0.05, 0.01]  # the negative gap drawn as it is
    assert [ln.get_ydata()[0] for ln in gap.lines if ln is not values] == [0.05]  # the symptom's threshold
    lo, hi = gap.get_ylim()
    assert lo < -0.05 < 0.3 < hi


def _rows(layer_msd: dict[int, float]) -> list[DriftRow]:
    rows = [DriftRow(f"model.layers.{la}.mlp.down_proj.weight", la, "down_proj", m, m) for la, m in layer_msd.items()]
    return rows + [DriftRow("model.norm.weight", None, "norm", 0.0, 0.0)]


def test_zero_drift_layers_are_visible_on_the_drift_plot():
    drift = {"sft": _rows({0: 0.0, 1: 0.0, 2: 0.0, 3: 1e-9, 4: 1e-5})}  # layers 0-2 frozen by the SFT run
    assert zero_drift_layers([r for r in drift["sft"] if r.layer is not None]) == [0, 1, 2]
    fig = drift_figure(drift)
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    (line,) = [ln for ln in ax.lines if len(ln.get_xdata()) == 5]
    assert list(line.get_ydata()) == [0.0, 0.0, 0.0, 1e-9, 1e-5]
    lo, hi = ax.get_ylim()
    assert lo < 0.0 and hi > 1e-5  # the zeros lie inside the axes, not at -inf as on a log axis
    px = ax.transData.transform([(0, 0.0), (3, 1e-9), (4, 1e-5)])[:, 1]
    assert np.isfinite(px).all() and px[0] < px[1] < px[2]
    assert px[2] - px[1] > 2 * (px[1] - px[0])  # the 4 decades above the smallest drift stay apart
    assert [t.get_text() for t in ax.texts] == ["no drift: layers 0-2"]
    assert not drift_figure({"sft": _rows({0: 1e-4, 1: 2e-4})}).axes[0].texts
