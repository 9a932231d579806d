"""What a person sees of a run: the console, the diagnostic figures, and the predictions file."""
