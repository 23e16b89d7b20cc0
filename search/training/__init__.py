"""Training, knowing nothing of Optuna: the config, the one engine (`fit`, `fit_stacked`), its
model, optimizers, schedule, augmentation, saved state, stack planning and device."""
