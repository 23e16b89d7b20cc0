"""The transforms a table's numeric columns may get (search.data.tables), named here, where
importing a name costs nothing: the config and the study files check knobs against it."""

PLE_BINS = (8, 16, 32, 64)  # piecewise-linear encodings' bin counts a study may pick (search.data.piecewise)
# StandardScaler, normal quantiles, robust + smooth clip; then "pleN": piecewise-linear encoding in
# N quantile bins per column (Gorishniy et al. 2022), which widens the model's input N-fold.
NUMERICS = ("standard", "quantile", "robust", *(f"ple{n}" for n in PLE_BINS))


def ple_bins(numeric: str) -> int | None:
    """The bin count of a piecewise-linear numeric transform ("ple16" -> 16); None for the others."""
    return int(numeric[3:]) if numeric.startswith("ple") else None
