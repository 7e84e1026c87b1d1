"""What to measure: scenario files, prompt files and the one definition of a model variant."""
