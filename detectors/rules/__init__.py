"""Rule detectors: thresholds a credit controller would recognise."""
