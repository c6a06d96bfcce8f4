"""What a user runs end to end: each recipe is a config object with a nested TrainConfig."""
