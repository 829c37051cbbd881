"""Export: a dataset as an ImageFolder tree, Hugging Face Parquet shards or WebDataset tar shards."""
