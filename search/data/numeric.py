"""The transforms a table's numeric columns may get (search.data.tables), named here, where
importing a name costs nothing: the config and the study files check knobs against it."""

PLE_BINS = (8, 16, 32, 64)  # piecewise-linear encodings' bin counts a study may pick (search.data.piecewise)
# StandardScaler, normal quantiles, robust + smooth clip; then "pleN": piecewise-linear encoding in
# N quantile bins per column (Gorishniy et al. 2022), which widens the model's input N-fold.
BASES = ("standard", "quantile", "robust", *(f"ple{n}" for n in PLE_BINS))
# Each also as "<base>+codes": the integer columns that look like codes (a school, a commune: 3 to
# MAX_CODES distinct whole numbers in the training rows) are one-hot as well, their numbers kept.
# A code's number orders nothing a network can split finely; one-hot, VietNamI's 194 communes
# took a fixed config from 0.40 to 0.52 validation R² (docs/benchmarks.md).
CODES = "+codes"
NUMERICS = (*BASES, *(f"{b}{CODES}" for b in BASES))
MAX_CODES = 256  # distinct values a code column may hold; more is a measurement, not a code


def base_of(numeric: str) -> str:
    """The scaling part of a numeric transform ("quantile+codes" -> "quantile")."""
    return numeric.removesuffix(CODES)


def with_codes(numeric: str) -> bool:
    return numeric.endswith(CODES)


def ple_bins(numeric: str) -> int | None:
    """The bin count of a piecewise-linear numeric transform ("ple16" -> 16); None for the others."""
    base = base_of(numeric)
    return int(base[3:]) if base.startswith("ple") else None
