"""The operator console: the control room's web page over the alerting stage of the same process."""
