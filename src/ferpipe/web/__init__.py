"""Web parts: the MLflow pyfunc (serving) and the demo page, both over the inference core."""
