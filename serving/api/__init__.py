"""What a request does, transport-free: predict, classify, regress and multi-inference (TF Serving's checks and
calls), the `ServingService` both transports call (with metadata, status and model management), and the REST
routes (`rest`)."""
