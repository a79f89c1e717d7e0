"""What an experiment is (`experiment.py`: the schema, `--set`, what the records
say) and the named recipes (`recipes.py`)."""
