from fedlsm.cli import app

app()
