"""The ground floor every stage stands on: errors, settings, secrets, input rows, tasks, devices and
models, the run-directory layer and the registries. Nothing here imports a stage."""
