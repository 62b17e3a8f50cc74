"""TF Serving side of keras_fcn: clients, a local TF-Serving-API server, deployment files."""
