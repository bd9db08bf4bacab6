"""Python twin of helloWorld.js: invoke it with data {"name": "allen"} to get "hello allen"."""


def main(event, callback):
    name = event["data"]["name"]
    callback(None, "hello " + name)
