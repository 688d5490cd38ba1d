"""The demo: a synthetic population and a live feed of what the pipeline publishes."""
