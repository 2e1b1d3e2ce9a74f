"""`rayrejuv rl`: config, driver, report."""
