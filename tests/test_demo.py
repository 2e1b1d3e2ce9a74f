"""The demo's config, table and bookkeeping (fast, no Ray). The demo end to end (`demo --quick`
submitted as a Ray job to a two-node cluster, logging to an MLflow server) is in test_ray_jobs.py."""

import json
import statistics

import pytest

from rayrejuv.commands.demo.config import QUICK, DemoConfig
from rayrejuv.commands.demo.driver import claim
from rayrejuv.commands.demo.results import STARTS, aggregate, markdown
from rayrejuv.config.base import merge_overrides, validate_config
from rayrejuv.errors import RejuvError


def _fake(seeds):
    before = {s: {"id_before": 0.1 * i, "ood_before": 0.05 * i, "entropy_before": 0.2 - 0.04 * i}
              for i, s in enumerate(STARTS)}
    per_seed = {
        s: [{"seed": k, "id_after": 0.1 * i + 0.01 * (k + 1) * (i + 1), "ood_after": 0.05 * i + 0.002 * k}
            for k in seeds]
        for i, s in enumerate(STARTS)
    }
    return before, per_seed


def test_aggregate_means_spreads_and_gains_are_exact():
    seeds = [0, 1, 2]
    before, per_seed = _fake(seeds)
    res = aggregate(seeds, before, per_seed)
    assert res["seeds"] == seeds and list(res["rows"]) == list(STARTS)
    for i, s in enumerate(STARTS):
        row = res["rows"][s]
        after = [0.1 * i + 0.01 * (k + 1) * (i + 1) for k in seeds]
        assert row["id_after"] == pytest.approx(statistics.fmean(after), abs=1e-12)
        assert row["spread"]["id_after"]["std"] == pytest.approx(statistics.stdev(after), abs=1e-12)
        assert row["id_gain"] == pytest.approx(statistics.fmean(after) - 0.1 * i, abs=1e-12)
        assert row["ood_gain"] == pytest.approx(0.002, abs=1e-12)
        assert row["entropy_before"] == before[s]["entropy_before"] and row["per_seed"] == per_seed[s]
    f = res["findings"]
    # gains rise with the start's index here: OverSFT (1) gains more than ModSFT (0)
    assert not f["oversft_gains_less_than_modsft"]["holds"]
    assert f["oversft_gains_less_than_modsft"]["seeds_holding"] == 0
    assert f["rejuvenation_beats_oversft_after_rl_id"]["holds"]
    assert f["rejuvenation_beats_oversft_after_rl_id"]["seeds_holding"] == 3
    assert not f["rejuvenation_restores_entropy"]["holds"]  # entropy falls with the index here
    json.dumps(res)  # results.json is plain JSON


def test_findings_count_the_paired_seeds_on_which_they_hold():
    seeds = [0, 1, 2]
    before, per_seed = _fake(seeds)
    # OverSFT (ID after 0.12, 0.14, 0.16) beats Rejuvenation on seed 1 only; the mean still favours
    # Rejuvenation (0.35 vs 0.14)
    per_seed["oversft_rejuvenation"][1]["id_after"] = 0.13
    per_seed["oversft_rejuvenation"][2]["id_after"] = 0.80
    # ModSFT gains 0.01, 0.02, 0.03; OverSFT 0.02, 0.04, 0.06 -> lowered below ModSFT's on seed 2
    per_seed["oversft"][2]["id_after"] = 0.1 + 0.025
    res = aggregate(seeds, before, per_seed) | {"id_split": "hard", "ood_split": "general"}
    f = res["findings"]
    rid = f["rejuvenation_beats_oversft_after_rl_id"]
    assert rid["holds"] and rid["seeds_holding"] == 2
    assert rid["rejuvenation"] == pytest.approx((0.34 + 0.13 + 0.80) / 3, abs=1e-12)
    gains = f["oversft_gains_less_than_modsft"]
    assert gains["seeds_holding"] == 1 and not gains["holds"]  # mean gain 0.028 > ModSFT's 0.02
    assert f["rejuvenation_beats_oversft_after_rl_ood"]["seeds_holding"] == 3
    text = markdown(res)
    assert "rejuvenation beats oversft after rl id: **holds**, 2 of 3 seeds (rejuvenation 0.423" in text
    assert "rejuvenation restores entropy: **does not hold** (oversft" in text  # seed-free: no count


def test_aggregate_refuses_missing_or_misordered_seeds():
    before, per_seed = _fake([0, 1])
    per_seed["oversft"] = per_seed["oversft"][::-1]
    with pytest.raises(ValueError, match="oversft: runs for seeds \\[1, 0\\]"):
        aggregate([0, 1], before, per_seed)


def test_markdown_table_has_every_start_and_finding():
    before, per_seed = _fake([0, 1])
    text = markdown(aggregate([0, 1], before, per_seed) | {"id_split": "hard", "ood_split": "general"})
    lines = text.splitlines()
    assert lines[0].startswith("| start | entropy before RL | ID (hard) before | ID (hard) after")
    assert sum(line.startswith("| OverSFT") or line.startswith("| ModSFT") for line in lines) == 4
    assert "| 0.015 ± 0.007 |" in lines[2]  # ModSFT's ID after: 0.01, 0.02
    assert text.count("**holds**") + text.count("**does not hold**") == 4


def test_config_defaults_quick_and_errors(tmp_path):
    cfg = DemoConfig()
    assert cfg.seed_list == [0, 1, 2] and cfg.world.data.rl_distribution == "hard"
    quick = validate_config(DemoConfig, merge_overrides(QUICK, {"seeds": 3, "seed": 10}))
    assert quick.seed_list == [10, 11, 12] and quick.rungs.oversft_epoch == 4.0 and quick.rl.steps == 3
    with pytest.raises(RejuvError, match="rungs.oversft_epoch=5 is not a saved ladder epoch"):
        validate_config(DemoConfig, {"rungs": {"oversft_epoch": 5}})
    with pytest.raises(RejuvError, match="modsft_epoch must be smaller"):
        validate_config(DemoConfig, {"rungs": {"modsft_epoch": 32, "oversft_epoch": 2}})
    with pytest.raises(RejuvError, match="seeds"):
        validate_config(DemoConfig, {"seeds": 0})


def test_claim_resumes_same_settings_and_refuses_others(tmp_path):
    out = tmp_path / "demo"
    cfg = DemoConfig(out=out)
    claim(out, cfg)
    (out / "marker").write_text("kept")
    claim(out, cfg.model_copy(update={"seeds": 5}))  # more seeds extend the same demo
    claim(out, cfg.model_copy(update={"seed": 3}))  # other seeds too (runs live under seed-<s>)
    assert (out / "marker").exists()
    other = DemoConfig.model_validate({"out": out, "rl": {"lr": 1e-4}})
    with pytest.raises(RejuvError, match="different settings .*pass --overwrite"):
        claim(out, other)
    claim(out, other.model_copy(update={"overwrite": True}))
    assert not (out / "marker").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("")
    with pytest.raises(RejuvError, match="not a rayrejuv demo directory"):
        claim(foreign, DemoConfig(out=foreign))


def test_reward_curves_are_trailing_means_and_plot(tmp_path):
    import numpy as np

    from rayrejuv.commands.demo.report import _trailing_mean, plot_demo_rewards

    rng = np.random.default_rng(0)
    curves = rng.normal(size=(3, 11))
    for window in (1, 3, 5, 20):  # 20 > steps: a running mean from the first step
        want = [[curves[s, max(0, t - window + 1) : t + 1].mean() for t in range(11)] for s in range(3)]
        np.testing.assert_allclose(_trailing_mean(curves, window), want, rtol=0, atol=1e-12)
    per_seed = {
        s: [{"rewards": rng.uniform(-1, 1, 7).tolist(), "zero_std_fractions": rng.uniform(0, 1, 7).tolist()}
            for _ in range(2)]
        for s in STARTS
    }
    plot_demo_rewards(per_seed, tmp_path / "rewards.png")
    assert (tmp_path / "rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
