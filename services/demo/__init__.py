"""The offline demo workspace and the tiny random CLIP it trains with."""
