"""One package per command: its typed config, its driver and its report (figures, summary, json)."""
