"""`rayrejuv diagnose`: config, driver, report."""
