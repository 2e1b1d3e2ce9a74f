"""Reset where SFT acted (issue 14 item 4): neurons SFT left bit-identical to the base are not
candidates, reset_ratio is a fraction of the candidates, the report counts the excluded, the
option brings them back, and `union` says when it is larger than asked."""

import warnings

import pytest
import torch
from conftest import load_tensors, rejuv_config, same_bits

from rayrejuv.arch import Axis
from rayrejuv.commands.rejuvenate.driver import rejuvenate
from rayrejuv.method.neurons import changed_slices
from rayrejuv.method.selection import AggregateSelector, UnionSelector, reset_count


def test_changed_slices_rows_columns_and_bits():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    sft = base.clone()
    sft[1, 2] += 1.0
    assert changed_slices(sft, base, Axis.ROW).tolist() == [False, True, False]
    assert changed_slices(sft, base, Axis.COL).tolist() == [False, False, True, False]
    signed = base.clone()
    signed[0, 0] = -0.0  # equal as numbers, not as bits
    assert changed_slices(signed, base, Axis.ROW).tolist() == [True, False, False]
    bias = torch.tensor([1.0, 2.0, float("nan")])
    assert changed_slices(bias.clone(), bias, Axis.ROW).tolist() == [False, False, False]  # NaN bits equal
    bf = base.to(torch.bfloat16)
    assert changed_slices(bf.float(), bf, Axis.ROW).tolist() == [False] * 3  # dtypes differ: by value


def test_selectors_never_choose_a_non_candidate():
    rel = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.5, 0.0, 0.3, 0.2]])
    candidates = torch.tensor([False, True, True, True])  # neuron 0, the most relevant, is untouched
    agg = AggregateSelector(4, 2, candidates)
    agg.update(rel)
    assert agg.select().tolist() == [1, 2]  # sums 0.3, 0.4, 0.2: the top 2 of the candidates
    assert agg.relevance_sum.tolist() == pytest.approx([1.1, 0.3, 0.4, 0.2])  # its score is still reported
    uni = UnionSelector(4, 1, candidates)
    uni.update(rel)
    assert uni.select().tolist() == [1, 2]  # each token's top among the candidates
    with pytest.raises(ValueError, match="cannot choose 3 of 2 candidate neurons"):
        AggregateSelector(4, 3, torch.tensor([True, True, False, False]))


def test_reset_count_is_a_fraction_of_the_candidates():
    assert reset_count(0.01, 61440) == 614  # the pair: layers 20-29 of 30 trained, 1% of their neurons
    assert reset_count(0.01, 10) == 1 and reset_count(0.01, 0) == 0  # SFT changed nothing: nothing to reset
    sel = AggregateSelector(5, 0, torch.zeros(5, dtype=torch.bool))
    sel.update(torch.ones(1, 5) / 5)
    assert sel.select().numel() == 0


@pytest.fixture
def half_frozen(make_pair):
    """A qwen2 pair (q/k/v biases) whose SFT left layer 0 and a few neurons of layer 1 equal to
    the base: 576 neurons of layer 0, q rows 5-9 of layer 1 (rows 0-4 keep a changed bias
    entry, so they are changed neurons), down_proj column 3 of layer 1."""
    from safetensors.torch import save_file

    base, sft = make_pair("qwen2")
    b, s = load_tensors(base), load_tensors(sft)
    for name in b:
        if name.startswith("model.layers.0."):
            s[name] = b[name].clone()
    s["model.layers.1.self_attn.q_proj.weight"][:10] = b["model.layers.1.self_attn.q_proj.weight"][:10]
    s["model.layers.1.self_attn.q_proj.bias"][5:10] = b["model.layers.1.self_attn.q_proj.bias"][5:10]
    s["model.layers.1.mlp.down_proj.weight"][:, 3] = b["model.layers.1.mlp.down_proj.weight"][:, 3]
    (file,) = sft.glob("*.safetensors")
    save_file(s, file, metadata={"format": "pt"})
    untouched = {(0, k, i) for k, n in KINDS.items() for i in range(n)}
    untouched |= {(1, "q_proj", i) for i in range(5, 10)} | {(1, "down_proj", 3)}
    return base, sft, untouched


KINDS = {"q_proj": 64, "k_proj": 32, "v_proj": 32, "o_proj": 64, "gate_proj": 128, "up_proj": 128, "down_proj": 128}


def _chosen(report) -> set:
    return {(n["layer"], n["module"], n["index"]) for n in report["neurons"]}


def test_untouched_neurons_are_never_reset_and_are_counted(half_frozen, tmp_path, calibration, capsys):
    base, sft, untouched = half_frozen
    assert len(untouched) == 582
    cfg = rejuv_config(base, sft, tmp_path / "out", calibration=calibration, reset_ratio=0.05)
    report = rejuvenate(cfg, progress=False)
    assert report["num_neurons"] == 1152 and report["excluded_untouched"] == 582
    assert report["candidates"] == 1152 - 582 == report["attribution"]["candidates"]
    assert report["reset_requested"] == report["reset_count"] == round(0.05 * 570) == 28
    assert report["reset_fraction_of_candidates"] == pytest.approx(28 / 570)
    assert not _chosen(report) & untouched
    # the reason: after fusion an untouched neuron already equals the base (alpha 0.5: 0.5x + 0.5x is x exactly)
    out, b = load_tensors(tmp_path / "out"), load_tensors(base)
    assert all(same_bits(out[n], b[n]) for n in b if n.startswith("model.layers.0."))
    from rayrejuv.commands.rejuvenate.report import print_rejuvenation_summary

    print_rejuvenation_summary(report, 1.0)
    assert "582 that SFT left equal to the base excluded" in capsys.readouterr().out.replace("\n", " ")


def test_reset_untouched_brings_them_back(half_frozen, tmp_path, calibration):
    base, sft, untouched = half_frozen
    cfg = rejuv_config(base, sft, tmp_path / "out", calibration=calibration, reset_ratio=0.05, reset_untouched=True)
    report = rejuvenate(cfg, progress=False)
    assert (report["excluded_untouched"], report["candidates"]) == (0, 1152)
    assert report["reset_count"] == round(0.05 * 1152)  # the old behaviour: a fraction of every neuron
    assert _chosen(report) & untouched  # the budget goes partly to no-ops again


def test_union_warns_with_its_real_ratio(half_frozen, tmp_path, calibration):
    base, sft, untouched = half_frozen
    cfg = rejuv_config(base, sft, tmp_path / "u", calibration=calibration, reset_ratio=0.05, selection="union")
    with pytest.warns(UserWarning) as record:
        report = rejuvenate(cfg, progress=False)
    n = report["reset_count"]
    assert n > 28 and not _chosen(report) & untouched
    (w,) = [str(r.message) for r in record if r.category is UserWarning]  # not GC-timed ResourceWarnings
    assert w == (f"--selection union reset {n} neurons, {n / 28:.1f}x the 28 that --reset-ratio 0.05 asks for: a "
                 f"real ratio of {n / 570:.4f} of the 570 candidates ({n / 1152:.4f} of all 1152 neurons)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aggregate gives what was asked: no warning
        rejuvenate(cfg.model_copy(update={"out": tmp_path / "a", "selection": "aggregate"}), progress=False)


@pytest.mark.slow  # Ray start + actors (~35 s); the default run checks the in-process path
def test_ray_is_bit_identical_and_its_actors_threads_fit_their_reservation(half_frozen, tmp_path, calibration,
                                                                           monkeypatch):  # fmt: skip
    """The candidates on Ray (the attribution actor) are those in process; each LayerShard actor
    runs torch on the CPU it reserved, not on what the environment says (OMP_NUM_THREADS=3 here,
    which Ray's workers inherit and Ray then leaves alone: torch would run 2 threads on 2 cores;
    checked by removing the call, which fails this test)."""
    import filecmp

    base, sft, untouched = half_frozen
    common = {"calibration": calibration, "reset_ratio": 0.05, "max_shard_gb": 40e-6}
    local = rejuvenate(rejuv_config(base, sft, tmp_path / "local", **common), progress=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    ray_cfg = rejuv_config(base, sft, tmp_path / "ray", ray={"enabled": True, "workers": 2}, **common)
    on_ray = rejuvenate(ray_cfg, progress=False)
    assert on_ray["execution"]["mode"] == "ray" and len(on_ray["execution"]["per_worker"]) == 2
    assert [w["threads"] for w in on_ray["execution"]["per_worker"].values()] == [1, 1]  # ray.cpus_per_worker
    assert on_ray["neurons"] == local["neurons"] and on_ray["excluded_untouched"] == local["excluded_untouched"] == 582
    files = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray").iterdir())
    for f in files:
        if f != "rejuvenation_report.json" and not f.endswith(".png"):
            assert filecmp.cmp(tmp_path / "local" / f, tmp_path / "ray" / f, shallow=False), f


def test_the_attribution_sizes_its_threads_in_the_actor_and_in_process(make_pair, tmp_path, calibration, monkeypatch):
    import torch

    from rayrejuv.commands.rejuvenate import algorithm
    from rayrejuv.distributed.attribution import AttributionWorker
    from rayrejuv.rejuvenation import reset_search

    before = torch.get_num_threads()
    try:
        AttributionWorker(1.5)  # the actor's body: floor of its reserved CPUs
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    seen = []
    real = reset_search.find_reset_set

    def spy(*args, **kw):
        seen.append(torch.get_num_threads())
        return real(*args, **kw)

    monkeypatch.setattr(algorithm, "find_reset_set", spy)
    base, sft = make_pair("llama")
    cfg = rejuv_config(base, sft, tmp_path / "out", calibration=calibration, ray={"enabled": False,
                                                                                  "attribution_cpus": 1})  # fmt: skip
    torch.set_num_threads(2)
    try:
        rejuvenate(cfg, progress=False)
        assert seen == [1] and torch.get_num_threads() == 2  # in process: for the step, then as it was
    finally:
        torch.set_num_threads(before)
