"""What is served: versions loaded from base paths (`versions`, `manager`), the config files (`config`,
`config_protos`, `config_watch`), signatures as numpy callables (`signatures`), and batching (`batching`)."""
