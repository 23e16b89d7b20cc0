"""The search on Optuna: study files, the space, a trial's begin and end, stacks of trials, the
sampler and pruner, the runner, recovery and resuming, and finished studies."""
