from libs.cli.main import app

app()
