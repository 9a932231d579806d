"""What a person sees of a run: the console, the diagnostic figures, and the predictions file."""

# binclf's default logger, by class path: read by the CLI's defaults and by the sweep, which never imports
# Lightning in its own process.
RUN_LOGGER = "binclf.monitoring.tensorboard.RunLogger"
