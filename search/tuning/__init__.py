"""The search on Optuna: study files, the space, the objective, sampler and pruner, the runner."""
