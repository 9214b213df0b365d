"""The command-line commands other than ``run``: submit, status, requeue, demo, plot."""
