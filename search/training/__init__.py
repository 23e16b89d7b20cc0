"""Training, knowing nothing of Optuna: the config, the model, `fit`, its schedule, augmentation,
the device it runs on and the best-weights checkpoint."""
