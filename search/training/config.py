"""A trial's whole configuration, as plain data.

`TrainConfig` is what the model builder and the trainer take: no Optuna object ever gets past the
search-space module. It round-trips through JSON, so the exported `best.json` retrains exactly the
model the search scored.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from search.data.numeric import NUMERICS, ple_bins
from search.errors import UserError

# Names the study files may use; the model and trainer map each to a torch class.
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid", "hardsigmoid")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "onecycle")  # the lr's shape after warm-up (search.training.schedule)
WHITENINGS = ("none", "zca")
NORMS = ("batch", "layer", "none")  # a study's `norm` knob: sets batchnorm or layernorm (or neither)
MAX_MIX_ALPHA = 10.0  # Beta(alpha, alpha) beyond this is lam = 0.5 to within a few percent
MAX_TRANSLATE = 16  # pixels; a shift is bounded by the image anyway (checked where the data is known)
MAX_ENSEMBLE = 256  # ensemble members in one model; TabM uses 32, and each costs a batch's activations
NUM_EMBEDDINGS = ("none", "periodic")  # a table's `num_embedding` knob (search.training.embeddings)
MAX_PLR = 1024  # frequencies, or embedding units, per numeric column: far past any useful size


_CHOICES = {
    "activation": ACTIVATIONS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "whiten": WHITENINGS,
    "numeric": NUMERICS, "num_embedding": NUM_EMBEDDINGS,
}  # fmt: skip
# name: (low, high, whether high itself is allowed)
_RANGES = {
    "dropout": (0.0, 1.0, False), "bn_momentum": (0.0, 1.0, True), "warmup": (0.0, 1.0, False),
    "label_smoothing": (0.0, 1.0, False), "translate": (0, MAX_TRANSLATE, True),
    "ema": (0.0, 1.0, False), "mixup": (0.0, MAX_MIX_ALPHA, True), "cutmix": (0.0, MAX_MIX_ALPHA, True),
}  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    # --- architecture ---
    hidden: tuple[int, ...] = (512, 256)  # width of each hidden layer, in units; () = linear model
    activation: str = "relu"  # one of ACTIVATIONS, applied after each hidden layer
    dropout: float = 0.0  # probability of zeroing a hidden unit during training
    batchnorm: bool = True  # BatchNorm1d between each hidden Linear and its activation
    bn_momentum: float = 0.1  # PyTorch's convention: weight of the newest batch in running stats
    # LayerNorm in BatchNorm's place (not with it): each sample normalized over its own units, so
    # nothing depends on the batch and there are no running statistics.
    layernorm: bool = False
    # Hidden layers after the first as pre-norm residual blocks, h + W2 act(W1 norm(h)), an
    # inverted bottleneck (Bachmann et al. 2023, "Scaling MLPs"): every hidden width equal.
    residual: bool = False
    expansion: int = 4  # a block's inner width, in multiples of its width (residual only)
    # Members of a parameter-efficient ensemble inside the one model (BatchEnsemble as TabM uses
    # it, Gorishniy et al. 2025): all share every hidden weight matrix, each has its own rank-1
    # input and output scalings, biases, norms and output layer; each sees the same batch, the
    # loss is the mean of theirs, a prediction averages their probabilities (or outputs). 1 = off.
    ensemble_k: int = 1
    # A learnable per-feature scale x * s in front of the first layer (RealMLP's "scale" layer,
    # Holzmüller et al. 2024), s initialised at 1 and trained like every other weight.
    feature_scale: bool = False
    # --- optimisation ---
    optimizer: str = "sgd"  # one of OPTIMIZERS
    lr: float = 1e-3  # learning rate, per step
    momentum: float = 0.9  # sgd and rmsprop only; adam(w) use their betas
    weight_decay: float = 0.0  # L2 coefficient, applied by the optimizer
    l1: float = 0.0  # L1 lambda: loss += l1 * sum(|W|) over Linear weight matrices only
    batch_size: int = 128  # samples per optimizer step
    schedule: str = "constant"  # one of SCHEDULES, stepped per batch over all epochs' steps
    warmup: float = 0.0  # fraction of all steps spent ramping the lr linearly from 0 to `lr`
    label_smoothing: float = 0.0  # weight moved from the true class to a uniform target (train loss only)
    # Per-step decay of an exponential moving average of the weights, which is scored and returned
    # in their place (0: off). Step t averages with min(ema, (1+t)/(10+t)), so the random start
    # fades within the first steps of a short budget; BatchNorm keeps its live running statistics.
    ema: float = 0.0
    # --- input ---
    mixup: float = 0.0  # MixUp: each batch's lam ~ Beta(mixup, mixup); 0 = off (search.training.mix)
    cutmix: float = 0.0  # CutMix (images): lam ~ Beta(cutmix, cutmix); with mixup, a coin picks per batch
    hflip: bool = False  # mirror a random half of each training batch left-right
    tta_hflip: bool = False  # images: score each image with its mirror, averaging the two's
    # probabilities, on validation and test alike (twice the scoring passes, no training cost)
    translate: int = 0  # pixels: shift each training image by up to this in x and y, zero-padded
    whiten: str = "none"  # one of WHITENINGS: "zca" decorrelates pixels, fitted on the train split
    zca_eps: float = 1.0  # added to the covariance's eigenvalues (normalized-pixel variance units)
    numeric: str = "standard"  # tables: one of NUMERICS, how numeric columns are scaled
    # Tables: "periodic" embeds each numeric column, as `numeric` scaled it, the PLR way (Gorishniy
    # et al. 2022): plr_frequencies learned frequencies c, [cos 2 pi c x, sin 2 pi c x], a Linear
    # of the column's own to plr_dim units, ReLU; missing-value and one-hot columns pass unchanged.
    # Shared by every ensemble member. Images have no numeric columns: there it does nothing.
    num_embedding: str = "none"
    plr_frequencies: int = 48  # k, frequencies per column: the paper's and rtdl_num_embeddings' default
    # The frequencies' initial N(0, sigma) (truncated at 3 sigma). RealMLP's default (Holzmueller et
    # al. 2024), and the middle of the rtdl_num_embeddings README's advice: the best sigma is under
    # 0.2 on half the tasks, and too large hurts far more than too small (its own default is 0.01).
    plr_sigma: float = 0.1
    plr_dim: int = 24  # units each column's embedding has (rtdl_num_embeddings' default for an MLP)
    epochs: int = 10  # passes over the training split
    seed: int = 0  # weight init and batch order; the same seed on the CPU retrains bit for bit
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unknown keys, kept for provenance

    def __post_init__(self) -> None:
        # Normalise JSON's lists back to tuples so configs compare and hash reliably.
        object.__setattr__(self, "hidden", tuple(int(w) for w in self.hidden))
        problems = [
            f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}"
            for name, allowed in _CHOICES.items()
            if getattr(self, name) not in allowed
        ]
        problems += [
            f"{name} must be in [{low}, {high}{']' if closed else ')'}, got {getattr(self, name)}"
            for name, (low, high, closed) in _RANGES.items()
            if isinstance(v := getattr(self, name), (int, float))
            and not (low <= v < high or closed and v == high)
        ]
        if any(w < 1 for w in self.hidden):
            problems.append(f"hidden widths must be >= 1, got {list(self.hidden)}")
        if self.lr <= 0 or not self.zca_eps > 0:
            problems.append(f"lr and zca_eps must be > 0, got {self.lr} and {self.zca_eps}")
        if self.weight_decay < 0 or self.l1 < 0 or self.momentum < 0:
            problems.append("weight_decay, l1 and momentum must be >= 0")
        if self.batch_size < 1 or self.epochs < 1:
            problems.append("batch_size and epochs must be >= 1")
        if self.residual and len(set(self.hidden)) > 1:
            problems.append(f"residual blocks need equal hidden widths, got {list(self.hidden)}")
        if isinstance(self.expansion, bool) or not isinstance(self.expansion, int) or self.expansion < 1:
            problems.append(f"expansion must be a whole number >= 1, got {self.expansion!r}")
        if self.batchnorm and self.layernorm:
            problems.append("batchnorm and layernorm exclude each other: pick one norm")
        k = self.ensemble_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_ENSEMBLE:
            problems.append(f"ensemble_k must be a whole number in [1, {MAX_ENSEMBLE}], got {k!r}")
        for name in ("batchnorm", "layernorm", "residual", "hflip", "tta_hflip", "feature_scale"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.translate, bool) or not isinstance(self.translate, int):
            problems.append(f"translate must be a whole number of pixels, got {self.translate!r}")
        problems += self._embedding_problems()
        if problems:
            raise UserError("invalid config: " + "; ".join(problems))

    def _embedding_problems(self) -> list[str]:
        problems = [
            f"{name} must be a whole number in [1, {MAX_PLR}], got {v!r}"
            for name in ("plr_frequencies", "plr_dim")
            if isinstance(v := getattr(self, name), bool) or not isinstance(v, int) or not 1 <= v <= MAX_PLR
        ]
        sigma = self.plr_sigma
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
            problems.append(f"plr_sigma must be a number > 0, got {sigma!r}")
        if self.num_embedding == "periodic" and ple_bins(self.numeric) is not None:
            problems.append(
                f'num_embedding = "periodic" embeds scaled numeric columns, which numeric = '
                f'"{self.numeric}" turns into bins: pick one of the two'
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        if not d["extra"]:
            del d["extra"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise UserError(f"invalid config: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "extra"}
        try:
            return cls(**known, extra={**d.get("extra", {}), **extra})
        except (TypeError, ValueError) as e:
            raise UserError(f"invalid config: {e}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def norm(self) -> str:
        """Which normalization each hidden layer has: "batch", "layer" or "none"."""
        return "batch" if self.batchnorm else "layer" if self.layernorm else "none"

    @property
    def augments(self) -> bool:
        """Whether training batches are augmented (flips or shifts), which needs image data."""
        return self.hflip or self.translate > 0

    @property
    def mixes(self) -> bool:
        """Whether training batches are blended with a shuffled copy of themselves."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def embeds(self) -> bool:
        """Whether numeric table columns get the periodic embedding (none in image data)."""
        return self.num_embedding == "periodic"

    @property
    def needs_images(self) -> bool:
        """Whether any knob flips, shifts or cuts images: augmentation, CutMix or test-time flips."""
        return self.augments or self.tta_hflip or self.cutmix > 0
