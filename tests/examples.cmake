# The example programs under tools/examples, built, run and checked.
