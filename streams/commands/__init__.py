"""The `cxmon` command line and the tools it runs: publish, simulate, backtest, dead letters."""
