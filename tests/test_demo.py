"""The demo's config, table and bookkeeping (fast, no Ray). The demo end to end (`demo --quick`
submitted as a Ray job to a two-node cluster, logging to an MLflow server) is in test_ray_jobs.py."""

import json
import statistics
from dataclasses import replace

import pytest

from rayrejuv.commands.demo.config import QUICK, DemoConfig
from rayrejuv.commands.demo.driver import claim
from rayrejuv.commands.demo.results import STARTS, DemoResults, SeedRun, StartScores, aggregate, markdown
from rayrejuv.config.base import merge_overrides, validate_config
from rayrejuv.errors import RejuvError


def _run(seed, id_after=0.0, ood_after=0.0, rewards=(), zero_std_fractions=()):
    return SeedRun(seed=seed, id_after=id_after, ood_after=ood_after, entropy_after=0.0, reward_first=0.0,
                   reward_last=0.0, zero_std_fraction_first=0.0, rl_seconds=0.0, steps=len(rewards),
                   generated_tokens=0.0, rewards=list(rewards),
                   zero_std_fractions=list(zero_std_fractions), run_dir="")


def _fake(seeds):
    before = {s: StartScores(id_before=0.1 * i, ood_before=0.05 * i, entropy_before=0.2 - 0.04 * i)
              for i, s in enumerate(STARTS)}
    per_seed = {
        s: [_run(k, id_after=0.1 * i + 0.01 * (k + 1) * (i + 1), ood_after=0.05 * i + 0.002 * k) for k in seeds]
        for i, s in enumerate(STARTS)
    }
    return before, per_seed


def _aggregate(seeds, before, per_seed):
    return aggregate(seeds, before, per_seed, "hard", "general", 400)


def test_aggregate_means_spreads_and_gains_are_exact():
    seeds = [0, 1, 2]
    before, per_seed = _fake(seeds)
    res = _aggregate(seeds, before, per_seed)
    assert res.seeds == seeds and list(res.rows) == list(STARTS)
    for i, s in enumerate(STARTS):
        row = res.rows[s]
        after = [0.1 * i + 0.01 * (k + 1) * (i + 1) for k in seeds]
        assert row.id_after == pytest.approx(statistics.fmean(after), abs=1e-12)
        assert row.spread["id_after"].std == pytest.approx(statistics.stdev(after), abs=1e-12)
        assert row.id_gain == pytest.approx(statistics.fmean(after) - 0.1 * i, abs=1e-12)
        assert row.ood_gain == pytest.approx(0.002, abs=1e-12)
        assert row.entropy_before == before[s].entropy_before and row.per_seed == per_seed[s]
    f = res.findings
    # gains rise with the start's index here: OverSFT (1) gains more than ModSFT (0)
    assert not f["oversft_gains_less_than_modsft"].holds
    assert f["oversft_gains_less_than_modsft"].seeds_holding == 0
    assert f["rejuvenation_beats_oversft_after_rl_id"].holds
    assert f["rejuvenation_beats_oversft_after_rl_id"].seeds_holding == 3
    assert not f["rejuvenation_restores_entropy"].holds  # entropy falls with the index here
    results = DemoResults(res, {"epoch-32": "rigid"}, {"RL": 1.0}, wall_s=2.0, out="/x")
    json.dumps(results.to_json())  # results.json is plain JSON


def test_findings_count_the_paired_seeds_on_which_they_hold():
    seeds = [0, 1, 2]
    before, per_seed = _fake(seeds)
    # OverSFT (ID after 0.12, 0.14, 0.16) beats Rejuvenation on seed 1 only; the mean still favours
    # Rejuvenation (0.35 vs 0.14)
    per_seed["oversft_rejuvenation"][1] = replace(per_seed["oversft_rejuvenation"][1], id_after=0.13)
    per_seed["oversft_rejuvenation"][2] = replace(per_seed["oversft_rejuvenation"][2], id_after=0.80)
    # ModSFT gains 0.01, 0.02, 0.03; OverSFT 0.02, 0.04, 0.06 -> lowered below ModSFT's on seed 2
    per_seed["oversft"][2] = replace(per_seed["oversft"][2], id_after=0.1 + 0.025)
    res = _aggregate(seeds, before, per_seed)
    f = res.findings
    rid = f["rejuvenation_beats_oversft_after_rl_id"]
    assert rid.holds and rid.seeds_holding == 2
    assert rid.numbers["rejuvenation"] == pytest.approx((0.34 + 0.13 + 0.80) / 3, abs=1e-12)
    gains = f["oversft_gains_less_than_modsft"]
    assert gains.seeds_holding == 1 and not gains.holds  # mean gain 0.028 > ModSFT's 0.02
    assert f["rejuvenation_beats_oversft_after_rl_ood"].seeds_holding == 3
    text = markdown(res)
    assert "rejuvenation beats oversft after rl id: **holds**, 2 of 3 seeds (rejuvenation 0.423" in text
    assert "rejuvenation restores entropy: **does not hold** (oversft" in text  # seed-free: no count


def test_aggregate_refuses_missing_or_misordered_seeds():
    before, per_seed = _fake([0, 1])
    per_seed["oversft"] = per_seed["oversft"][::-1]
    with pytest.raises(ValueError, match="oversft: runs for seeds \\[1, 0\\]"):
        _aggregate([0, 1], before, per_seed)


def test_markdown_table_has_every_start_and_finding():
    before, per_seed = _fake([0, 1])
    text = markdown(_aggregate([0, 1], before, per_seed))
    lines = text.splitlines()
    assert lines[0].startswith("| start | entropy before RL | ID (hard) before | ID (hard) after")
    assert sum(line.startswith("| OverSFT") or line.startswith("| ModSFT") for line in lines) == 4
    assert "| 0.015 ± 0.007 |" in lines[2]  # ModSFT's ID after: 0.01, 0.02
    assert text.count("**holds**") + text.count("**does not hold**") == 4
    assert "Each pass@1 is over 400 prompts per split: standard error at most 0.025." in text


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
    other = DemoConfig.model_validate({"out": out, "rl": {"grpo": {"lr": 1e-4}}})
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
        s: [_run(k, rewards=rng.uniform(-1, 1, 7).tolist(), zero_std_fractions=rng.uniform(0, 1, 7).tolist())
            for k in range(2)]
        for s in STARTS
    }
    plot_demo_rewards(per_seed, tmp_path / "rewards.png")
    assert (tmp_path / "rewards.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_embeds_the_sections_it_drives_with_the_measured_recipe():
    from rayrejuv.config.rejuvenation import ResetSearchConfig
    from rayrejuv.config.rl import GRPOConfig
    from rayrejuv.config.world import WorldSpec

    cfg = DemoConfig()
    assert isinstance(cfg.rl.grpo, GRPOConfig) and isinstance(cfg.rejuvenation, ResetSearchConfig)
    assert isinstance(cfg.world, WorldSpec)
    w = cfg.world
    assert (w.data.id_steps, w.data.id_max, w.data.sft_examples, w.train.pretrain_epochs) == (3, 15, 200, 2.5)
    assert w.data.eval_examples == 1000
    assert (w.model.hidden_size, w.model.intermediate_size, w.model.num_layers) == (128, 256, 3)
    assert w.train.sft_epochs == [0.5, 1, 2, 4, 8, 16, 32, 64]
    assert (cfg.rungs.modsft_epoch, cfg.rungs.oversft_epoch) == (2.0, 64.0)
    # a partial world section keeps the demo's world in every field it does not name (a nested merge)
    partial = DemoConfig.model_validate({"world": {"data": {"eval_examples": 2000}, "seed": 3}})
    assert partial.world == w.model_copy(update={"seed": 3, "data": w.data.model_copy(update={"eval_examples": 2000})})
    q = validate_config(DemoConfig, QUICK).world
    assert (q.data.id_steps, q.data.id_max, q.data.sft_examples, q.train.pretrain_epochs) == (2, 20, 96, 1.0)
    g = cfg.rl.grpo
    assert (g.prompts_per_step, g.group_size, g.lr, g.beta, g.temperature, g.max_new_tokens, g.micro_batch_size) == (
        8, 8, 3e-5, 0.0, 1.0, 48, 64)
    assert g.share_prompts
    assert w.train.micro_batches == 1 and not cfg.rl.learner.gradient_checkpointing
    # a partial learner section keeps the recipe's other fields (no checkpointing)
    assert DemoConfig.model_validate({"rl": {"learner": {"workers": 1}}}).rl.learner == cfg.rl.learner
    r = cfg.rejuvenation
    assert (r.alpha, r.reset_ratio, r.omega, r.tokens_per_example) == (0.5, 0.01, 1.0, 8)
    assert (cfg.rl.steps, cfg.rl.concurrent) == (40, 2)
    assert (cfg.eval.examples, cfg.eval.entropy_examples, cfg.eval.diagnose_examples, cfg.eval.diagnose_k) == (
        1000, 200, 64, 8)
    with pytest.raises(RejuvError, match=r"eval.entropy_examples=300 is more than eval.examples=200"):
        validate_config(DemoConfig, {"eval": {"examples": 200, "entropy_examples": 300}})
    # shared prompts need the learner's gradient checkpointing off: refused when the config is read
    with pytest.raises(RejuvError, match="grpo.share_prompts needs learner.gradient_checkpointing: false"):
        validate_config(DemoConfig, {"rl": {"learner": {"gradient_checkpointing": True}}})
    # the demo cannot score more prompts than its world holds
    with pytest.raises(RejuvError, match=r"eval.examples=1000 is more than the world holds per eval split "
                                         r"\(world.data.eval_examples=200\): lower eval.examples or raise"):
        validate_config(DemoConfig, {"world": {"data": {"eval_examples": 200}}})
    assert validate_config(DemoConfig, {"world": {"data": {"eval_examples": 200}}, "eval": {"examples": 200}})
    # nothing declared twice: the demo's own sections hold no field of the sections they embed
    assert not set(type(cfg.rl).model_fields) & set(GRPOConfig.model_fields)
    assert not set(DemoConfig.model_fields) & set(ResetSearchConfig.model_fields)  # (`seed` is the RL seed)
    # a partial section fills its gaps from the recipe, not from GRPOConfig's own defaults
    other = DemoConfig.model_validate({"rl": {"grpo": {"lr": 1e-4}}, "rejuvenation": {"reset_ratio": 0.02}})
    assert other.rl.grpo == g.model_copy(update={"lr": 1e-4})
    assert other.rejuvenation == r.model_copy(update={"reset_ratio": 0.02})
    quick = validate_config(DemoConfig, QUICK).rl.grpo
    assert (quick.prompts_per_step, quick.group_size, quick.max_new_tokens, quick.lr, quick.beta) == (4, 4, 32, 3e-5, 0)
    assert quick.micro_batch_size == 16  # the step in one micro-batch (4 prompts x 4 samples)
    given = DemoConfig.model_validate({"rl": {"grpo": {"prompts_per_step": 4, "micro_batch_size": 8}}})
    assert given.rl.grpo.micro_batch_size == 8
    with pytest.raises(RejuvError, match="rejuvenation.calibration: the demo calibrates the reset on its world's"):
        validate_config(DemoConfig, {"rejuvenation": {"calibration": "/x.jsonl"}})


def test_fingerprint_excludes_where_and_how_the_seeds_and_the_baselines():
    cfg = DemoConfig()
    assert set(cfg.fingerprint()) == set(DemoConfig.model_fields) - {"overwrite", "ray", "tracking", "out", "seeds",
                                                                      "seed", "baselines", "world_cache"}
    assert cfg.fingerprint()["rl"]["grpo"]["lr"] == 3e-5 and cfg.fingerprint()["rejuvenation"]["alpha"] == 0.5


def test_every_rl_run_gets_the_recipe_and_ray_gets_their_cpu_demand(tmp_path, monkeypatch):
    from pathlib import Path

    from rayrejuv.commands.demo import driver
    from rayrejuv.commands.testbed.driver import WorldLayout
    from rayrejuv.config.runtime import TrackingConfig

    cfg = validate_config(DemoConfig, merge_overrides(QUICK, {"out": str(tmp_path / "d")}))
    world = WorldLayout(Path("/w"))
    run = driver.rl_config(cfg, world, Path("/w/m"), 7, Path("/w/rl"), TrackingConfig(run_name="rl:x"))
    assert run.grpo == cfg.rl.grpo and (run.steps, run.seed, run.checkpoint_every, run.eval_every) == (3, 7, 1, 0)
    assert run.tracking.run_name == "rl:x" and run.train_data == Path("/w/data/rl_train.jsonl")
    assert driver.rl_cpu_demand(cfg, world) == 2.0  # learner + rollout actor; no reference at beta 0
    kl = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"grpo": cfg.rl.grpo.model_copy(update={"beta": 0.1}),
                                                                "concurrent": 3})})
    assert driver.rl_cpu_demand(kl, world) == 3.0  # + the reference actor

    class Asked(Exception):
        pass

    def session(address, cpu_demand, logs):
        raise Asked(address, cpu_demand, logs)

    monkeypatch.setattr(driver, "ray_session", session)
    with pytest.raises(Asked) as e:
        driver.run_demo(kl, progress=False)
    assert e.value.args == (None, 9.0, (tmp_path / "d" / "logs").absolute())  # 3 runs x 3 CPUs; OUT/logs


def test_the_diagnosis_scores_diagnose_examples_prompts_of_eval_id(tmp_path, monkeypatch):
    from pathlib import Path

    from rayrejuv.commands.demo import driver
    from rayrejuv.commands.diagnose import driver as diagnose_driver
    from rayrejuv.commands.testbed.driver import WorldLayout
    from rayrejuv.config.runtime import TrackingConfig

    cfg = validate_config(DemoConfig, merge_overrides(QUICK, {"out": str(tmp_path / "d")}))
    asked = []
    monkeypatch.setattr(diagnose_driver, "diagnose", lambda dcfg, progress: asked.append(dcfg))
    world = WorldLayout(Path("/w"))
    driver.diagnose_rungs(cfg, world, tmp_path / "diag", TrackingConfig(enabled=False), False)
    (d,) = asked
    assert (d.max_examples, d.k, d.data) == (16, 4, Path("/w/data/eval_id.jsonl"))  # not eval.examples (24)
    assert d.sft == [world.sft(1.0), world.sft(4.0)] and d.base == world.base


def test_scores_are_kept_and_reused_only_for_the_same_weights_and_eval_sets(tmp_path, monkeypatch):
    import rayrejuv.models.evaluate as evaluate
    from rayrejuv.commands.demo import driver

    calls = []

    def fake_score(model_dir, splits, entropy_rows, max_new_tokens, chat_template):
        calls.append((model_dir, len(splits["id"])))
        return {"id": 0.25 * len(calls), "ood": 0.5, "entropy": 0.125}

    monkeypatch.setattr(evaluate, "score_checkpoint", fake_score)
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-1")
    rows = [{"prompt": f"Q{i}", "answer": str(i), "response": str(i)} for i in range(4)]
    evals = driver.EvalSets("hard", "general", rows, rows, rows)
    cache = tmp_path / "scores" / "start.json"

    def score(e=evals, tokens=48):
        return driver._score(str(model), e, tokens, "auto", cache)

    first = score()
    assert first == {"id": 0.25, "ood": 0.5, "entropy": 0.125} and len(calls) == 1
    assert score() == first and len(calls) == 1  # same weights, sets, settings: read back
    assert score(driver.EvalSets("hard", "general", rows[:3], rows, rows))["id"] == 0.5  # another eval set
    assert score(tokens=32)["id"] == 0.75  # other generation settings
    (model / "model.safetensors").write_bytes(b"weights-2")  # other weights (e.g. a run started over)
    assert score()["id"] == 1.0 and len(calls) == 4
    assert score()["id"] == 1.0 and len(calls) == 4
    assert json.loads(cache.read_text())["scores"] == {"id": 1.0, "ood": 0.5, "entropy": 0.125}


def test_results_json_keeps_its_format():
    before, per_seed = _fake([0, 1])
    table = _aggregate([0, 1], before, per_seed)
    results = DemoResults(table, {"epoch-4": "plastic"}, {"testbed": 1.5}, wall_s=3.0, out="/o")
    j = results.to_json()
    assert list(j) == ["seeds", "rows", "findings", "id_split", "ood_split", "prompts_per_split", "diagnosis",
                       "timings_s", "wall_s", "baselines"]
    assert j["prompts_per_split"] == 400
    assert j["baselines"] is None  # without --baselines
    row = j["rows"]["modsft"]
    assert list(row) == ["id_before", "ood_before", "entropy_before", "per_seed", "id_after", "ood_after", "id_gain",
                         "ood_gain", "spread"]
    assert list(row["spread"]) == ["id_after", "ood_after", "id_gain", "ood_gain"]
    assert row["spread"]["id_after"] == {"mean": 0.015, "std": statistics.stdev([0.01, 0.02]), "min": 0.01,
                                         "max": 0.02}
    assert list(row["per_seed"][0]) == ["seed", "id_after", "ood_after", "entropy_after", "reward_first",
                                        "reward_last", "zero_std_fraction_first", "rl_seconds", "steps",
                                        "generated_tokens", "rewards",
                                        "zero_std_fractions", "run_dir"]
    assert j["findings"]["rejuvenation_restores_entropy"] == {
        "holds": False, "oversft": 0.16, "rejuvenation": 0.2 - 0.04 * 3, "modsft": 0.2}
    assert list(j["findings"]["oversft_gains_less_than_modsft"]) == ["holds", "seeds_holding", "oversft_id_gain",
                                                                     "modsft_id_gain"]
    assert (j["id_split"], j["ood_split"], j["diagnosis"], j["wall_s"]) == ("hard", "general", {"epoch-4": "plastic"},
                                                                            3.0)
    assert json.loads(json.dumps(j)) == j
