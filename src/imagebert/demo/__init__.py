"""The built-in demo: a rendered-scene corpus and the end-to-end pipeline behind `make demo`."""
