"""Clusters: two sets clustered together, shares, lift and keywords per cluster."""
