"""The `msa` command line's parts beside flows/cli.py, which holds the app and the commands of the stages."""
