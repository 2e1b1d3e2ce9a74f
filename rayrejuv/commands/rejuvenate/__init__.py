"""`rayrejuv rejuvenate`: config, driver, report."""
