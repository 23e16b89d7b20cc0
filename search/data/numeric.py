"""The transforms a table's numeric columns may get (search.data.tables), named here, where
importing a name costs nothing: the config and the study files check knobs against it."""

NUMERICS = ("standard", "quantile", "robust")  # StandardScaler, normal quantiles, robust + smooth clip
