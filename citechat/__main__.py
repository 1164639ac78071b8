from citechat.cli import app

app()
