"""Names that are data: what a study and its trials record, and where a study's files go.

Every user-attr, system-attr and study-attr name, and every file name under `results/<study>/`,
is written here and nowhere else, so the search, the outputs, the dashboard's reader and a user's
own script agree on them. Imports nothing heavy: reading a name must not load torch or Optuna.
"""

from __future__ import annotations

from pathlib import Path

from search.errors import UserError

# ---------------------------------------------------------------- a trial's user attrs
ATTR_ARCH = "architecture"  # one line naming every layer: 3072-512(bn,relu)-256(bn,relu)-10
ATTR_PARAMS = "n_params"  # the model's parameter count
ATTR_LATENCY = "latency_ms"  # the untrained model's forward pass of a fixed batch (search.tuning.costs)
ATTR_EPOCH_SCORES = "epoch_scores"  # {"epoch": validation score}: a two-objective trial's reports
ATTR_SECONDS = "train_seconds"  # its share of training time, seconds (validation excluded)
ATTR_EPOCHS = "epochs_run"  # epochs trained (fewer than the budget when pruned)
ATTR_DEVICE = "device"  # where it trained: cpu, cuda:0
ATTR_SEED = "seed"  # the seed it trained with (weight init, batch order, dropout, augmentation)
ATTR_REASON = "reason"  # why it was pruned or failed, in words
ATTR_WORKER = "worker"  # host:pid:index of the worker that ran it
ATTR_BASELINE = "baseline"  # True on the study file's baseline trial: trained to the end, never pruned
ATTR_START = "warm_start"  # True on a trial the study file's [[start]] enqueued (pruned like any)
ATTR_FIRST_ATTEMPT = "first_attempt"  # the number of the trial a retry repeats (its own, if none)
ATTR_RESUMED = "resumed_from_epoch"  # a retry that carried on from its first attempt's saved state
ATTR_STACK_ID = "stack_id"  # the number of the first trial of the stack it trained in
ATTR_STACK_SIZE = "stack_size"  # trials in that stack when it started
ATTR_STACK_PADDING = "stack_padding"  # share of the stack's matmul work spent on padding
# on an audit study's trials (search.posthoc.audit)
ATTR_AUDITED = "audited_trial"  # the number of the pruned trial it re-ran
ATTR_PRUNED_AT = "pruned_at_epoch"  # the epoch that trial was pruned after
ATTR_VALUE_AT_PRUNE = "value_at_prune"  # its value then

# ---------------------------------------------------------------- a trial's system attrs
ATTR_BEAT = "search:heartbeat"  # {"at": the worker's time.time(), "every": seconds}, through grpc://

# ---------------------------------------------------------------- a study's user attrs
STUDY_DATASET = "dataset"
STUDY_DATA_DIR = "data_dir"  # where the search read its data (export and retraining read it again)
STUDY_VAL_FRACTION = "val_fraction"
STUDY_SPLIT_SEED = "split_seed"
STUDY_EPOCHS = "epochs"  # the epoch budget of a trial
STUDY_SEED = "seed"  # the run's base seed: trial N trains with trial_seed(seed, N)
STUDY_SPACE = "space"  # the study file's [space] table, as it was
STUDY_FILE = "study_file"
STUDY_DERIVED_FROM = "audit_of"  # on an audit study: the study it audits
STUDY_TABLE = "table"  # a table study's files, target and columns (search.data.tables.TableSpec)
STUDY_TASK = "task"  # classification or regression, as the data was read
STUDY_METRIC = "metric"  # what the trials' values score (search.data.targets.METRICS)
STUDY_OBJECTIVES = "objectives"  # ["score"], or ["score", "params" | "latency"]; absent: ["score"]
# Resuming a study with other values for these would mix incomparable trials; export needs them.
BINDING = (STUDY_DATASET, STUDY_VAL_FRACTION, STUDY_SPLIT_SEED, STUDY_EPOCHS, STUDY_SPACE, STUDY_TABLE)

# ---------------------------------------------------------------- results/<study>/
RESULTS_DIR = "results"
BEST_WEIGHTS = "best_model.pt"  # the search's best trial so far: {trial_number, value, state_dict}
BEST_META = "best_model.json"  # its config, number and value, for people and quick checks
POOL_DIR = "pool"  # what completed trials keep for the ensemble (search.tuning.pool)
POOL_INDEX = "index.json"  # in pool/: the trials whose weights are kept, and their values
ENSEMBLE_PT = "ensemble.pt"  # export: the ensemble's members' configs, weights and state_dicts
RESUME_DIR = "resume"  # each running trial's saved state: resume/trial-<first attempt>.pt
BEST_JSON = "best.json"  # export: the config, data binding and provenance
MODEL_PT = "model.pt"  # export: the portable model's state_dict
MODEL_TXT = "model.txt"  # export: its layers and parameter counts
MODEL_INT8_PT = "model-int8.pt"  # export --quantize int8: the dynamically quantized model's state_dict
MODEL_HALF_PT = "model-half.pt"  # export --half: model.pt's state_dict in float16
TRIALS_CSV = "trials.csv"
REPORT_TXT = "test_report.txt"  # the one test-split evaluation
REPORT_JSON = "test_report.json"
REPORT_HTML = "report.html"  # search.report's page
SAMPLES_PNG = "samples.png"  # search.show data
PREDICTIONS_PNG = "predictions.png"  # test images captioned true / predicted
ERRORS_PNG = "errors.png"  # the most confident mistakes
CONFUSION_PNG = "confusion.png"  # a table classifier's confusion matrix on the test split
ACTUAL_PNG = "predicted_vs_actual.png"  # a table regressor's predictions against the truth
IMPORTANCE_PNG = "importance.png"  # permutation importance of each input column, test split
PREPROCESS_SKOPS = "preprocess.skops"  # a table model's fitted preprocessing (search.artifacts.predict)
PREPROCESS_PKL = "preprocess.pkl"  # the same before skops: a pickle, never opened (export again)
PREDICTIONS_CSV = "predictions.csv"  # search.predict's default output
AUDIT_JSON = "audit.json"
CERTIFIED_JSON, CERTIFIED_TXT = "certified.json", "certified.txt"
CERTIFIED_BEST, CERTIFIED_MODEL = "certified_best.json", "certified_model.pt"
RETRAIN_DIR = "retrain"  # beside best.json: search.retrain's files


def study_dir(results_dir: str | Path, study_name: str) -> Path:
    """Where a study's files live: results/<study>/ (the name made safe for a path).

    A name that is only dots (`.`, `..`) would point at the results folder or above it: refused.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    if not safe.strip("."):
        raise UserError(
            f"--study-name {study_name!r}: a study name must hold a letter, digit, '-' or '_' "
            "(its results folder is named after it)"
        )
    return Path(results_dir) / safe


def state_path(resume_dir: Path, first_attempt: int) -> Path:
    """A trial's saved training state, named by its first attempt, which its retries share."""
    return resume_dir / f"trial-{first_attempt}.pt"
