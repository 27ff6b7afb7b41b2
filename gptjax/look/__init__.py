"""Looking inside a trained model: what its parameters, attention, heads and layers do, as tables, PNGs, HTML."""
