"""rulegym.train: loops that plug agents into envs, the CLI, runs and reports."""
