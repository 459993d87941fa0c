from certbroker.cli.main import run

run()
