"""The wsevents test suite (a package, so that subprocesses can import ``tests.cli_targets``)."""
