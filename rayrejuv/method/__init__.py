"""The paper's equations as pure tensor functions: no files, no Ray, no MLflow."""
