"""`rayrejuv tune`'s parts without Ray: the probe's curve summaries and objectives, the typed
leaderboard and summary (their JSON as before), the config's checks of `fixed` and `probe.rl`."""

import json

import pytest

from rayrejuv.errors import RejuvError

BASE = {"base": "b", "sft": "s", "calibration": "c.jsonl", "train_data": "t.jsonl", "eval_data": "e.jsonl"}


def test_probe_curve_is_the_mean_so_far_and_the_mean_of_the_last_window(tmp_path):
    from rayrejuv.commands.rl.driver import RunLayout
    from rayrejuv.commands.tune.trial import OBJECTIVES, ProbeCurve

    c = ProbeCurve.of([-1.0, 0.0, 0.5, 1.0, 0.25], window=2)
    assert c.auc == pytest.approx(0.15, abs=1e-12) and c.recent == pytest.approx(0.625, abs=1e-12)
    layout = RunLayout(tmp_path)
    records = [{"step": 0, "eval/pass_at_1": 0.5}] + [{"step": s, "reward/mean": r, "time/step": 1.0}
                                                      for s, r in enumerate([-1.0, 0.0, 0.5, 1.0], start=1)]
    layout.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert ProbeCurve.read(layout, window=2, through=2) == ProbeCurve(auc=-0.5, recent=-0.5)
    assert ProbeCurve.read(layout, window=3, through=4) == ProbeCurve(auc=0.125, recent=0.5)
    assert OBJECTIVES["probe_reward_end"].during(c) == c.recent and OBJECTIVES["probe_reward_auc"].during(c) == c.auc
    assert OBJECTIVES["eval_pass_at_1"].during(c) == c.auc  # ASHA ranks by the probe before the evals exist
    evals = {"eval/id_pass_at_1": 0.5, "eval/ood_pass_at_1": 0.25}
    assert OBJECTIVES["eval_pass_at_1"].final(c, evals, 0.25) == pytest.approx(0.75 * 0.5 + 0.25 * 0.25)
    assert OBJECTIVES["eval_pass_at_1"].final(c, {"eval/id_pass_at_1": 0.5}, 0.0) == 0.5


def _row(trial, objective, alpha, status="finished"):
    from rayrejuv.commands.tune.results import TrialRow

    return TrialRow(trial=trial, params={"alpha": alpha, "selection": "union"}, status=status, objective=objective,
                    probe_reward_auc=0.1, id_pass_at_1=0.5 if objective is not None else None, ood_pass_at_1=None,
                    reports=3, trial_seconds=12.5, checkpoint=f"/x/{trial}" if objective is not None else None)


def test_leaderboard_rows_and_summary_keep_their_json(tmp_path):
    from rayrejuv.commands.tune.results import TrialRow, TuneSummary, leaderboard_markdown, ranked

    board = ranked([_row("b", None, 0.7, "stopped early"), _row("a", 0.25, 0.5), _row("c", 0.5, 0.9)])
    assert [r.trial for r in board] == ["c", "a", "b"]
    assert list(board[0].to_dict()) == ["trial", "alpha", "selection", "status", "objective", "probe_reward_auc",
                                        "id_pass_at_1", "ood_pass_at_1", "reports", "trial_seconds", "checkpoint"]
    assert TrialRow.from_dict(board[2].to_dict()) == board[2]
    s = TuneSummary(best=board[0], best_yaml=tmp_path / "best.yaml", best_checkpoint=tmp_path / "c",
                    wall_seconds=30.0, trial_seconds_sum=37.5, leaderboard=board)
    stored = json.loads(s.to_json())
    assert list(stored) == ["best", "best_yaml", "best_checkpoint", "wall_seconds", "trial_seconds_sum", "leaderboard"]
    assert stored["best"]["alpha"] == 0.9 and stored["best_yaml"] == str(tmp_path / "best.yaml")
    assert TuneSummary.from_json(s.to_json()) == s
    md = leaderboard_markdown(board, ["alpha", "selection"]).splitlines()
    assert md[0] == ("| trial | alpha | selection | status | objective | probe_reward_auc | id_pass_at_1 | "
                     "ood_pass_at_1 | reports | trial_seconds |")
    assert md[2] == "| c | 0.9000 | union | finished | 0.5000 | 0.1000 | 0.5000 | - | 3 | 12.5000 |"
    assert md[4] == "| b | 0.7000 | union | stopped early | - | 0.1000 | - | - | 3 | 12.5000 |"


@pytest.mark.parametrize("values, message", [
    ({"fixed": {"nope": 1}}, r"^fixed: 'nope' is not a RejuvenateConfig field"),
    ({"fixed": {"dtype": "bf17"}}, r"^fixed: dtype: Input should be"),
    ({"probe": {"rl": {"grpo": {"lrr": 1e-3}}}}, r"^probe: rl\.grpo\.lrr: Extra inputs are not permitted"),
    ({"probe": {"rl": {"rollouts": {}}}}, r"^probe: rl\.rollouts: Extra inputs are not permitted"),
    ({"probe": {"rl": {"grpo": {"lr": -1.0}}}}, r"^probe: rl\.grpo\.lr: Input should be greater than 0"),
])
def test_fixed_and_probe_overrides_are_checked_at_config_time(values, message):
    from rayrejuv.commands.tune.config import TuneConfig
    from rayrejuv.config.base import validate_config

    with pytest.raises(RejuvError, match=message) as e:
        validate_config(TuneConfig, {**BASE, **values})
    assert "\n" not in str(e.value)


def test_trial_configs_come_from_the_search_config(tmp_path):
    from rayrejuv.commands.tune.config import TuneConfig

    cfg = TuneConfig.model_validate({**BASE, "fixed": {"dtype": "bfloat16", "omega": 0.5}, "seed": 3,
                                     "probe": {"steps": 4, "report_every": 2, "rl": {"grpo": {"lr": 1e-3},
                                                                                      "steps": 99}}})
    r = cfg.rejuvenate_config({"alpha": 0.6, "omega": 0.9}, tmp_path / "r")
    assert (r.dtype, r.alpha, r.omega, r.out, r.overwrite, r.ray.enabled) == ("bfloat16", 0.6, 0.9, tmp_path / "r",
                                                                              True, False)
    p = cfg.probe.rl_config(tmp_path / "r", cfg.train_data, tmp_path / "p", cfg.seed)
    assert (p.grpo.lr, p.steps, p.checkpoint_every, p.eval_every, p.seed, p.tracking.enabled) == (1e-3, 4, 2, 0, 3,
                                                                                                  False)
    # trial process + probe actors (learner 1, rollout 1, reference 1), for max_concurrent + 1 trials
    assert cfg.cpu_demand() == pytest.approx((0.5 + 3.0) * 3)
