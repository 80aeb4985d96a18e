"""Offline experiments on prepared sequences: the paper's Table 2 (`compare`), parameter
sweeps (`sweep`) and several runs summarised with standard errors (`aggregate`)."""
