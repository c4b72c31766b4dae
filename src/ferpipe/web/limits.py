"""What one scoring request may ask of the server: the pyfunc's model_config defaults, which
`ferpipe serve` flags override. No MLflow here, so the CLI reads them without loading it."""
MAX_PIXELS = 25_000_000  # one photo, from its header, before it is decoded
MAX_ROWS = 256
MAX_REQUEST_PIXELS = 100_000_000  # all photos of a request together, from their headers
MAX_SECONDS = 60.0  # the work stops here, not only the answer
