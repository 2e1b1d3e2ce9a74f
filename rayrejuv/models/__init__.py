"""Running Hugging Face models: loading, teacher-forced passes, attribution hooks."""
