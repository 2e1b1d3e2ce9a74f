"""`rayrejuv tune`: config, driver, report."""
