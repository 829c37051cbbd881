"""OCR: engines, rules, the OCR job, accuracy against ground truth, the TCP socket server."""
