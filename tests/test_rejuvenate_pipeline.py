"""End-to-end rejuvenation on tiny checkpoints of every family: exactness, tying, shards, loading."""

import hashlib
import json

import pytest
import torch
from conftest import FAMILIES, load_tensors, rejuv_config, same_bits

from rayrejuv.commands.rejuvenate.driver import rejuvenate
from rayrejuv.io.safetensors_format import tensor_bytes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fusion_endpoints_reproduce_inputs_bit_for_bit(make_pair, tmp_path, family, dtype):
    base, sft = make_pair(family, dtype=dtype, shard="20KB")  # several input shards
    assert len(list(base.glob("*.safetensors"))) > 1
    for alpha, expected in ((0.0, base), (1.0, sft)):
        out = tmp_path / f"out-{alpha}"
        rejuvenate(rejuv_config(base, sft, out, alpha=alpha, fusion_only=True, max_shard_gb=30e-6), progress=False)
        got, want = load_tensors(out), load_tensors(expected)
        assert set(got) == set(want)
        assert all(same_bits(got[n], want[n]) for n in want)
        assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()


def test_fusion_is_eq1_for_every_tensor(make_pair, tmp_path):
    base, sft = make_pair("qwen3", dtype=torch.bfloat16)
    out = tmp_path / "out"
    rejuvenate(rejuv_config(base, sft, out, alpha=0.3, fusion_only=True), progress=False)
    got, b, s = load_tensors(out), load_tensors(base), load_tensors(sft)
    for n in b:
        ref = 0.3 * s[n].double() + 0.7 * b[n].double()  # exact Eq. 1
        assert got[n].dtype == torch.bfloat16
        # float32 math then one rounding to bfloat16: within half a bf16 ulp, i.e. 2^-8 relative (+ float32 noise)
        torch.testing.assert_close(got[n].double(), ref, rtol=2**-8 + 1e-6, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_touches_exactly_the_selected_neurons(make_pair, tmp_path, calibration, family):
    base, sft = make_pair(family)
    fused_dir, rejuv_dir = tmp_path / "fused", tmp_path / "rejuv"
    rejuvenate(rejuv_config(base, sft, fused_dir, fusion_only=True), progress=False)
    report = rejuvenate(rejuv_config(base, sft, rejuv_dir, calibration=calibration, reset_ratio=0.03), progress=False)
    fused, rejuv, b = load_tensors(fused_dir), load_tensors(rejuv_dir), load_tensors(base)

    from rayrejuv.io.checkpoint import Checkpoint

    spec = Checkpoint(sft).spec
    assert report["reset_count"] == round(0.03 * report["num_neurons"])
    expected_changed = {n: torch.zeros_like(t, dtype=torch.bool) for n, t in fused.items()}
    for rec in report["neurons"]:
        kind = spec.kind(rec["module"])
        w = spec.weight_name(rec["layer"], kind)
        if kind.axis.value == "row":
            expected_changed[w][rec["index"], :] = True
            bias = spec.bias_name(rec["layer"], kind)
            if bias in fused:
                expected_changed[bias][rec["index"]] = True
        else:
            expected_changed[w][:, rec["index"]] = True
    for n, mask in expected_changed.items():
        assert same_bits(rejuv[n][mask], b[n][mask]), n  # omega=1: base values, exactly
        assert same_bits(rejuv[n][~mask], fused[n][~mask]), n  # and nowhere else
    assert sum(int(m.sum()) for m in expected_changed.values()) > 0


def test_omega_zero_equals_fusion_only(make_pair, tmp_path, calibration):
    base, sft = make_pair("llama")
    rejuvenate(rejuv_config(base, sft, tmp_path / "a", fusion_only=True), progress=False)
    rejuvenate(rejuv_config(base, sft, tmp_path / "b", calibration=calibration, omega=0.0), progress=False)
    a, b = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    assert all(same_bits(a[n], b[n]) for n in a)


@pytest.mark.parametrize("tie_base,tie_sft", [(True, True), (True, False), (False, True)])
def test_tied_embeddings(make_pair, tmp_path, tie_base, tie_sft):
    base, sft = make_pair("qwen3", tie_base=tie_base, tie_sft=tie_sft)
    out = tmp_path / "out"
    rejuvenate(rejuv_config(base, sft, out, alpha=0.5, fusion_only=True), progress=False)
    cfg = json.loads((out / "config.json").read_text())
    got, b, s = load_tensors(out), load_tensors(base), load_tensors(sft)
    if tie_base and tie_sft:
        assert cfg["tie_word_embeddings"] is True and "lm_head.weight" not in got
        return
    assert cfg["tie_word_embeddings"] is False  # an untied result must never claim to be tied
    head = lambda d, tied: d["model.embed_tokens.weight"] if tied else d["lm_head.weight"]  # noqa: E731
    ref = 0.5 * head(s, tie_sft) + 0.5 * head(b, tie_base)
    torch.testing.assert_close(got["lm_head.weight"], ref, rtol=0, atol=0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight.data, ref)


def test_output_is_a_loadable_hf_checkpoint_that_generates(make_pair, tmp_path, calibration, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, sft = make_pair("llama", dtype=torch.bfloat16)
    out = tmp_path / "out"
    report = rejuvenate(rejuv_config(base, sft, out, calibration=calibration), progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Q:1+2-3?A:", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gen.shape == (1, ids["input_ids"].shape[1] + 5)
    assert model.dtype == torch.bfloat16
    # the report and manifest
    on_disk = json.loads((out / "rejuvenation_report.json").read_text())
    assert on_disk["reset_count"] == report["reset_count"] == len(on_disk["neurons"])
    assert sum(on_disk["reset_by_kind"].values()) == on_disk["reset_count"]
    assert sum(on_disk["reset_by_layer"].values()) == on_disk["reset_count"]
    assert on_disk["attribution"]["reconstruction_error_max"] < 1e-3 * on_disk["attribution"]["logit_abs_mean"]
    assert set(on_disk["timings_s"]) >= {"entropy", "attribution", "write"}
    assert (out / "reset_map.png").stat().st_size > 1000
    manifest = json.loads((out / "checksums.json").read_text())
    for name, t in load_tensors(out).items():
        assert manifest["tensors"][name] == hashlib.sha256(tensor_bytes(t)).hexdigest()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_union_selection_reports_its_real_size(make_pair, tmp_path, calibration):
    base, sft = make_pair("llama")
    agg = rejuvenate(rejuv_config(base, sft, tmp_path / "a", calibration=calibration, reset_ratio=0.01), progress=False)
    uni = rejuvenate(
        rejuv_config(base, sft, tmp_path / "u", calibration=calibration, reset_ratio=0.01, selection="union"),
        progress=False,
    )
    assert uni["reset_count"] >= agg["reset_count"]
    assert uni["reset_count"] == len(uni["neurons"])


def test_fused_attribution_model_runs_and_differs(make_pair, tmp_path, calibration):
    base, sft = make_pair("qwen2")
    a = rejuvenate(rejuv_config(base, sft, tmp_path / "a", calibration=calibration, reset_ratio=0.05), progress=False)
    f = rejuvenate(
        rejuv_config(base, sft, tmp_path / "f", calibration=calibration, reset_ratio=0.05, attribution_model="fused"),
        progress=False,
    )
    assert a["reset_count"] == f["reset_count"]
    key = lambda r: [(n["layer"], n["module"], n["index"]) for n in r["neurons"]]  # noqa: E731
    assert set(key(a)) != set(key(f))


def test_a_truncated_shard_is_caught_before_the_rename(make_pair, tmp_path, monkeypatch):
    from rayrejuv.commands.rejuvenate import algorithm as pipeline
    from rayrejuv.io import writer

    base, sft = make_pair("llama")
    real = writer.verify_shards

    def truncate_then_verify(directory, plans):
        with open(directory / plans[0].file, "r+b") as f:
            f.truncate(f.seek(0, 2) - 4)
        real(directory, plans)

    monkeypatch.setattr(pipeline, "verify_shards", truncate_then_verify)
    with pytest.raises(RuntimeError, match="bytes, expected"):
        rejuvenate(rejuv_config(base, sft, tmp_path / "out", fusion_only=True), progress=False)
    assert not (tmp_path / "out").exists()


def test_the_mlflow_run_is_logged_beside_the_work_nested_and_failed_runs_recorded(make_pair, tmp_path, monkeypatch):
    """The logger (runs/side_run.py: the store's tracking agent) nests the run under a parent given by id
    from another process, logs params, metrics and the report, and records a failed run FAILED."""
    import mlflow

    from rayrejuv.config.runtime import TrackingConfig
    from rayrejuv.errors import RejuvError
    from rayrejuv.runs.tracking import tracked_run

    monkeypatch.chdir(tmp_path)  # the parent run, made here, puts the experiment's artifacts in ./mlruns
    base, sft = make_pair("llama")
    tracking = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="side")
    (tmp_path / "taken").mkdir()
    with tracked_run(tracking, "parent") as parent:
        ok = rejuv_config(base, sft, tmp_path / "out", fusion_only=True, tracking=parent.child(tracking, "ok"))
        report = rejuvenate(ok, progress=False)
        failed = rejuv_config(base, sft, tmp_path / "taken", fusion_only=True, tracking=parent.child(tracking, "bad"))
        with pytest.raises(RejuvError, match="already exists"):
            rejuvenate(failed, progress=False)
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["side"], output_format="list")}
    assert set(runs) == {"parent", "ok", "bad"}
    assert runs["ok"].info.status == "FINISHED" and runs["bad"].info.status == "FAILED"
    assert {runs[n].data.tags["mlflow.parentRunId"] for n in ("ok", "bad")} == {runs["parent"].info.run_id}
    assert runs["ok"].data.params["alpha"] == "0.5" and runs["bad"].data.params["out"] == str(tmp_path / "taken")
    assert runs["ok"].data.metrics["reset_count"] == report["reset_count"] == 0
    assert runs["ok"].data.metrics["time.write"] == pytest.approx(report["timings_s"]["write"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["ok"].info.run_id)}
    assert artifacts == {"rejuvenation_report.json"}


def test_a_tracking_store_that_fails_is_an_error_after_the_checkpoint_is_written(make_pair, tmp_path):
    from rayrejuv.errors import RejuvError

    base, sft = make_pair("llama")
    cfg = rejuv_config(base, sft, tmp_path / "out", fusion_only=True, tracking={"uri": "bogus-scheme://nowhere"})
    with pytest.raises(RejuvError, match=r"the checkpoint is written, but logging the run to MLflow failed \(exit 1"):
        rejuvenate(cfg, progress=False)
    assert (tmp_path / "out" / "model.safetensors").is_file()
