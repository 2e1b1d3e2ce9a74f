"""`demo --baselines`: the remedies as data, their runs' specs (token budgets from Rejuvenation's
runs), the comparison table on hand-computed numbers (fast, no Ray)."""

import statistics
from pathlib import Path

import pytest

from rayrejuv.commands.demo.baselines import REFERENCE, REMEDIES, compare, markdown, token_budget
from rayrejuv.commands.demo.results import SeedRun


def _run(seed, id_after, ood_after, steps=40, tokens=1000.0):
    return SeedRun(seed=seed, id_after=id_after, ood_after=ood_after, entropy_after=0.1, reward_first=0.0,
                   reward_last=0.0, zero_std_fraction_first=0.0, rl_seconds=0.0, steps=steps,
                   generated_tokens=tokens, rewards=[], zero_std_fractions=[], run_dir="")


def _rows(seeds):
    """Rejuvenation at 0.5/0.3 (ID/OOD) on every seed; remedy i at 0.4 + 0.1 * i on seed 0 only."""
    rows = {"oversft": [_run(s, 0.2, 0.1) for s in seeds], REFERENCE: [_run(s, 0.5, 0.3) for s in seeds]}
    for i, name in enumerate(REMEDIES):
        rows[name] = [_run(s, 0.4 + (0.1 * i if s == seeds[0] else 0.0), 0.3, steps=20 + s, tokens=500.0 * (s + 1))
                      for s in seeds]
    return rows


def test_remedies_are_valid_grpo_settings_of_the_recipe():
    from rayrejuv.commands.demo.config import DemoConfig
    from rayrejuv.config.rl import GRPOConfig

    recipe = DemoConfig().rl.grpo
    for name, remedy in REMEDIES.items():
        g = GRPOConfig.model_validate(recipe.model_dump() | remedy.grpo)
        changed = {k for k in GRPOConfig.model_fields if getattr(g, k) != getattr(recipe, k)}
        assert changed == set(remedy.grpo), name  # each row changes its remedy's fields and nothing else
    assert [n for n, r in REMEDIES.items() if r.tokens_of] == ["oversft_dynamic_sampling_tokens"]


def test_token_budget_is_the_reference_runs_tokens_at_the_same_seed():
    finished = {REFERENCE: [_run(0, 0.5, 0.3, tokens=1234.0), _run(1, 0.5, 0.3, tokens=999.9)]}
    assert token_budget(REMEDIES["oversft_dynamic_sampling_tokens"], 1, finished) == 999
    assert token_budget(REMEDIES["oversft_dynamic_sampling_tokens"], 0, finished) == 1234
    assert token_budget(REMEDIES["oversft_clip_higher"], 0, finished) is None


def test_compare_means_costs_and_paired_wins_are_exact():
    seeds = [0, 1, 2]
    table = compare(seeds, {k: k for k in _rows(seeds)}, _rows(seeds))
    assert list(table.rows) == ["oversft", REFERENCE, *REMEDIES]
    for i, name in enumerate(REMEDIES):
        row = table.rows[name]
        ids = [0.4 + 0.1 * i, 0.4, 0.4]
        assert row.spread["id_after"].mean == pytest.approx(statistics.fmean(ids), abs=1e-12)
        assert row.spread["id_after"].std == pytest.approx(statistics.stdev(ids), abs=1e-12)
        assert row.steps == 21.0 and row.generated_tokens == 1000.0  # means of 20..22 and 500..1500
        f_id = table.findings[f"rejuvenation_beats_{name.removeprefix('oversft_')}_id"]
        # remedy i beats Rejuvenation's 0.5 on seed 0 from i = 2 (0.6); ties (i = 1) are not wins
        assert f_id.seeds_holding == (3 if i == 0 else 2)
        assert f_id.holds == (statistics.fmean(ids) < 0.5)
        assert f_id.numbers == {"rejuvenation": 0.5, name: pytest.approx(statistics.fmean(ids), abs=1e-12)}
        f_ood = table.findings[f"rejuvenation_beats_{name.removeprefix('oversft_')}_ood"]
        assert not f_ood.holds and f_ood.seeds_holding == 0  # equal: 0.3 each
    text = markdown(table, "hard", "general")
    assert text.count("\n| ") == len(table.rows) and "1,000" in text and "holds, 3 of 3 seeds" in text


def test_compare_refuses_runs_of_other_seeds():
    rows = _rows([0, 1])
    rows[REFERENCE] = [rows[REFERENCE][1], rows[REFERENCE][0]]
    with pytest.raises(ValueError, match="oversft_rejuvenation: runs for seeds \\[1, 0\\]"):
        compare([0, 1], {k: k for k in rows}, rows)


def test_run_baselines_runs_each_remedy_from_oversft_with_its_budget(tmp_path):
    """The wiring, with the RL runs replaced: every (seed, remedy) once, from OverSFT, with the
    remedy's GRPO fields over the recipe and, for the token-matched row, Rejuvenation's tokens."""
    from rayrejuv.commands.demo import driver
    from rayrejuv.commands.demo.config import QUICK, DemoConfig
    from rayrejuv.config.base import merge_overrides, validate_config

    cfg = validate_config(DemoConfig, merge_overrides(QUICK, {"out": str(tmp_path / "d"), "baselines": True}))
    seen = []

    class Runner:  # RLRunner's run, on no pools
        def run(self, specs):
            seen.extend(specs)
            return {s.row: [] for s in specs} | {
                name: [_run(seed, 0.1, 0.1, tokens=float(seed)) for seed in cfg.seed_list] for name in REMEDIES}

    main = {"oversft": [_run(s, 0.2, 0.1) for s in cfg.seed_list],
            REFERENCE: [_run(s, 0.5, 0.3, tokens=700.0 + s) for s in cfg.seed_list]}
    table = driver.run_baselines(cfg, Runner(), Path("/w/oversft"), main, tmp_path, False)
    assert [(s.row, s.seed) for s in seen] == [(n, seed) for seed in cfg.seed_list for n in REMEDIES]
    for s in seen:
        assert s.model == Path("/w/oversft")
        assert s.grpo.model_dump() == cfg.rl.grpo.model_dump() | REMEDIES[s.row].grpo
        assert s.token_budget == (700 + s.seed if s.row == "oversft_dynamic_sampling_tokens" else None)
    assert list(table.rows) == ["oversft", *REMEDIES, REFERENCE]
    assert table.rows[REFERENCE].spread["id_after"].mean == 0.5


@pytest.mark.slow  # the quick demo and its remedies end to end: ~5-10 min on 2 cores
@pytest.mark.timeout(1500)
def test_quick_demo_with_baselines_end_to_end(tmp_path):
    """`demo --quick --baselines` on one seed: every remedy runs from OverSFT on the demo's pools;
    the token-matched row stops at the first step whose generated tokens reach Rejuvenation's."""
    import json

    from rayrejuv.commands.demo.config import QUICK, DemoConfig
    from rayrejuv.commands.demo.driver import run_demo
    from rayrejuv.config.base import merge_overrides, validate_config

    out = tmp_path / "q"
    cfg = validate_config(DemoConfig, merge_overrides(QUICK, {"out": str(out), "seeds": 1, "baselines": True,
                                                              "tracking": {"enabled": False}}))
    results = run_demo(cfg, progress=False)
    table = results.baselines
    assert list(table.rows) == ["oversft", *REMEDIES, REFERENCE] and table.seeds == [0]
    steps = cfg.rl.steps
    reference = table.rows[REFERENCE].per_seed[0]
    matched = table.rows["oversft_dynamic_sampling_tokens"].per_seed[0]
    assert matched.generated_tokens >= reference.generated_tokens and 1 <= matched.steps <= steps
    records = [json.loads(line) for line in (out / "rl" / "oversft_dynamic_sampling_tokens" / "seed-0" /
                                              "metrics.jsonl").read_text().splitlines()]
    totals = [r["sampling/generated_tokens_total"] for r in records]
    assert len(totals) == matched.steps and all(t < reference.generated_tokens for t in totals[:-1])
    plain = table.rows["oversft"].per_seed[0]
    assert table.rows["oversft_dynamic_sampling"].per_seed[0].generated_tokens >= plain.generated_tokens
    for name in ("oversft_minibatches", "oversft_clip_higher", "oversft_entropy_bonus"):
        assert table.rows[name].steps == steps
    assert json.loads((out / "results.json").read_text())["baselines"] == json.loads(json.dumps(table.to_json()))
    assert (out / "baselines.png").stat().st_size > 0 and "entropy bonus" in (out / "baselines.md").read_text()
    # every checkpoint's scores are kept beside it, the numbers of the tables (a re-run reads them back)
    kept = json.loads((out / "rl" / "oversft_clip_higher" / "seed-0" / "scores.json").read_text())["scores"]
    assert kept["id"] == table.rows["oversft_clip_higher"].per_seed[0].id_after
    start = json.loads((out / "scores" / "oversft_rejuvenation.json").read_text())["scores"]
    assert (start["id"], start["ood"]) == (results.table.rows[REFERENCE].id_before,
                                           results.table.rows[REFERENCE].ood_before)
