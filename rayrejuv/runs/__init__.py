"""The run service every command uses: run directories, local resources, the Ray session, MLflow runs."""
