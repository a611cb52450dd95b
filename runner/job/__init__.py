"""One job: load the model and the data, run the library over them, turn what it measured into rows.
pipeline.py is the job in named steps; the other modules are the steps' rooms."""
