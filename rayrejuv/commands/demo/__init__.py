"""`rayrejuv demo`: config, driver, report."""
