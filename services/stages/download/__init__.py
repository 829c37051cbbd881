"""Download: URL CSVs, S3 prefixes and name lists, folders and zips into the content-addressed store."""
