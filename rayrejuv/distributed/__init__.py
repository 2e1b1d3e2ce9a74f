"""Ray actors and worker groups: LayerShard writers, attribution, rollouts, reference, learner, metrics sink."""
