"""The model lifecycle on MLflow (`lifecycle.Registry`, passed to whoever needs it) and its
in-memory fake for unit tests (`memory.InMemoryRegistry`)."""
