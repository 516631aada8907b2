"""One module per stage. Each exports `Config` (its settings, which the CLI turns into options),
`run(cfg, store)` (the work; returns what it published) and `report(result, console)` (what the
terminal shows of the result). No stage imports another: what two stages share lives in r1v3/."""
