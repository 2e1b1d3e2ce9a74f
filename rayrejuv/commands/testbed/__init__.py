"""`rayrejuv testbed`: config, driver, report."""
