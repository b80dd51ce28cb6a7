"""Package data of Distillery: the built-in task files (tasks/*.yaml) and example configs (configs/*.yaml)."""
