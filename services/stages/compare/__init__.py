"""Compare REAL vs GEN: label-set statistics, embedding metrics, figures and reports."""
